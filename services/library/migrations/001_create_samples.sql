-- Voice samples: one row per uploaded clip, with the original upload and its
-- normalized 44.1 kHz mono WAV.
CREATE TABLE samples (
    id bigserial PRIMARY KEY,
    account_id bigint NOT NULL,
    speaker_name text NOT NULL,
    transcript text NOT NULL DEFAULT '',
    transcript_source text NOT NULL DEFAULT ''
        CHECK (transcript_source IN ('', 'user', 'stt')),
    is_default boolean NOT NULL DEFAULT false,
    visibility text NOT NULL DEFAULT 'private'
        CHECK (visibility IN ('private', 'unlisted', 'public')),
    collection text NOT NULL DEFAULT '',
    original_format text NOT NULL,
    original_audio bytea NOT NULL,
    normalized_wav bytea NOT NULL,
    duration_seconds double precision NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now(),
    update_time timestamptz NOT NULL DEFAULT now()
);

-- Listing walks an account's samples newest first (keyset pagination).
CREATE INDEX samples_account_newest ON samples (account_id, create_time DESC, id DESC);

-- At most one default sample per account, whatever the application does.
CREATE UNIQUE INDEX samples_one_default_per_account ON samples (account_id) WHERE is_default;
