-- Voice samples' audio moves to the object store (S3, runtime/objects.py): a
-- row names its two objects, the upload as it came (original_key) and its
-- normalized 44.1 kHz mono WAV (normalized_key), with their sizes. The
-- objects are stored before the row is committed, and deleted after it is.
ALTER TABLE samples ADD COLUMN original_key text;
ALTER TABLE samples ADD COLUMN normalized_key text;
ALTER TABLE samples ADD COLUMN original_bytes bigint;
ALTER TABLE samples ADD COLUMN normalized_bytes bigint;
-- Rows written before hold their audio in the bytea columns until
-- `python -m tools.move_audio` moves it into the bucket; 003 then drops them.
UPDATE samples SET original_bytes = octet_length(original_audio), normalized_bytes = octet_length(normalized_wav);
ALTER TABLE samples ALTER COLUMN original_bytes SET NOT NULL;
ALTER TABLE samples ALTER COLUMN normalized_bytes SET NOT NULL;
ALTER TABLE samples ALTER COLUMN original_audio DROP NOT NULL;
ALTER TABLE samples ALTER COLUMN normalized_wav DROP NOT NULL;
ALTER TABLE samples ADD CONSTRAINT samples_audio_kept CHECK (
    (original_key IS NOT NULL AND normalized_key IS NOT NULL)
    OR (original_audio IS NOT NULL AND normalized_wav IS NOT NULL)
);
-- The sweep of objects that no row names looks keys up.
CREATE UNIQUE INDEX samples_original_key ON samples (original_key);
CREATE UNIQUE INDEX samples_normalized_key ON samples (normalized_key);

-- Whether tools/move_audio.py has moved every sample's audio out of the
-- bytea columns (then migration 004 drops them): at once when there is none.
CREATE TABLE audio_move (moved boolean NOT NULL);
INSERT INTO audio_move SELECT NOT EXISTS (SELECT 1 FROM samples);

-- Objects whose rows are deleted, until they are deleted from the store too:
-- written in the statement that deletes the rows, removed once the objects
-- are gone, so a store that is down meanwhile leaves nothing behind (the
-- library's sweep tries again, S3_SWEEP_SECONDS).
CREATE TABLE object_deletions (
    key text PRIMARY KEY,
    since timestamptz NOT NULL DEFAULT now()
);
