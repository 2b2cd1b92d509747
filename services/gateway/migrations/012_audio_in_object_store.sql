-- Generated audio and uploaded files move to the object store (S3,
-- runtime/objects.py): a row names its object by key, with its size. The
-- object is stored before the row names it, and deleted after the row is.
ALTER TABLE generations ADD COLUMN audio_key text;
ALTER TABLE generations ADD COLUMN audio_bytes bigint NOT NULL DEFAULT 0;
-- The audio was deleted under GATEWAY_AUDIO_RETENTION_SECONDS; the record stays.
ALTER TABLE generations ADD COLUMN audio_expired boolean NOT NULL DEFAULT false;
UPDATE generations SET audio_bytes = octet_length(audio) WHERE audio IS NOT NULL;
CREATE UNIQUE INDEX generations_audio_key ON generations (audio_key);
-- The retention sweep's way in: the oldest generations that still have audio.
CREATE INDEX generations_audio_by_end ON generations (end_time) WHERE audio_key IS NOT NULL;

ALTER TABLE prediction_files ADD COLUMN content_key text;
ALTER TABLE prediction_files ADD COLUMN size bigint;
UPDATE prediction_files SET size = octet_length(content);
ALTER TABLE prediction_files ALTER COLUMN size SET NOT NULL;
ALTER TABLE prediction_files ALTER COLUMN content DROP NOT NULL;
ALTER TABLE prediction_files ADD CONSTRAINT prediction_files_content_kept
    CHECK (content_key IS NOT NULL OR content IS NOT NULL);
CREATE UNIQUE INDEX prediction_files_content_key ON prediction_files (content_key);

-- Objects whose rows are deleted (or whose audio expired), until they are
-- deleted from the store too: written in the statement that lets go of them,
-- removed once they are gone, so a store that is down meanwhile leaves
-- nothing behind (the gateway's sweep tries again, S3_SWEEP_SECONDS).
CREATE TABLE object_deletions (
    key text PRIMARY KEY,
    since timestamptz NOT NULL DEFAULT now()
);

-- Whether tools/move_audio.py has moved every generation's audio and file's
-- content out of the bytea columns (then migration 013 drops them): at once
-- when there is none.
CREATE TABLE audio_move (moved boolean NOT NULL);
INSERT INTO audio_move SELECT NOT EXISTS (SELECT 1 FROM generations WHERE audio IS NOT NULL)
    AND NOT EXISTS (SELECT 1 FROM prediction_files);
