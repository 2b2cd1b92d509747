-- Every generation request, stored when it arrives and kept as its history:
-- what was asked, where it ran, how it ended, and the audio it made.
CREATE TABLE generations (
    -- Insertion order: pages go newest first by it.
    seq bigserial PRIMARY KEY,
    -- The public id: "gen_" and 24 hex digits.
    id text NOT NULL UNIQUE,
    account_id bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    status text NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    input text NOT NULL,
    -- The model asked for ("" = auto-select) until a provider answers with the one it used.
    model text NOT NULL DEFAULT '',
    provider text NOT NULL DEFAULT '',
    -- {"S1": 12, "S2": 17}
    speakers jsonb NOT NULL DEFAULT '{}',
    -- GenerationParameters in proto JSON, defaults filled; the seed used once succeeded.
    parameters jsonb NOT NULL DEFAULT '{}',
    error_type text NOT NULL DEFAULT '',
    error_message text NOT NULL DEFAULT '',
    audio bytea,
    audio_duration_seconds double precision NOT NULL DEFAULT 0,
    visibility text NOT NULL DEFAULT 'private' CHECK (visibility IN ('private', 'unlisted', 'public')),
    collection text NOT NULL DEFAULT '',
    -- The secret part of the share URL; the audio is served by it only when not private.
    share_token text NOT NULL UNIQUE,
    create_time timestamptz NOT NULL DEFAULT now(),
    start_time timestamptz,
    end_time timestamptz
);

CREATE INDEX generations_account_newest ON generations (account_id, seq DESC);
