-- Predictions (the hosted predictor's API, predictions.py) are generations
-- with a little more: what the predictor's client asked for, and a way to
-- cancel them from any gateway replica.
ALTER TABLE generations DROP CONSTRAINT generations_status_check;
ALTER TABLE generations ADD CONSTRAINT generations_status_check
    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'canceled'));
-- {"model": "nari-labs/dia", "version": ..., "input": {...}, "webhook": ..., "webhook_events_filter": [...]};
-- NULL for a generation asked for otherwise.
ALTER TABLE generations ADD COLUMN prediction jsonb;
-- The gateway process running an asynchronous prediction, and when it last said it still is:
-- another replica takes over (or fails it) once that is too long ago.
ALTER TABLE generations ADD COLUMN runner text NOT NULL DEFAULT '';
ALTER TABLE generations ADD COLUMN runner_seen timestamptz;
CREATE INDEX generations_predictions_under_way ON generations (runner_seen)
    WHERE prediction IS NOT NULL AND status IN ('queued', 'running');

-- Files uploaded for prediction inputs (POST /v1/files).
CREATE TABLE prediction_files (
    seq bigserial PRIMARY KEY,
    -- "file_" and 24 hex digits.
    id text NOT NULL UNIQUE,
    account_id bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name text NOT NULL,
    content_type text NOT NULL,
    sha256 text NOT NULL,
    metadata jsonb NOT NULL DEFAULT '{}',
    content bytea NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX prediction_files_account_newest ON prediction_files (account_id, seq DESC);

-- The voice sample a prompt's audio became (one per account and content), so
-- that the same audio prompt is transcribed once.
CREATE TABLE prediction_prompt_samples (
    account_id bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    sha256 text NOT NULL,
    sample_id bigint NOT NULL,
    PRIMARY KEY (account_id, sha256)
);

-- The key that signs an account's webhook deliveries ("whsec_" and base64).
CREATE TABLE webhook_secrets (
    account_id bigint PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    secret text NOT NULL
);
