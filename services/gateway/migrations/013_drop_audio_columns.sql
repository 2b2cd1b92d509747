-- requires: SELECT moved AND NOT EXISTS (SELECT 1 FROM generations WHERE audio IS NOT NULL) AND NOT EXISTS (SELECT 1 FROM prediction_files WHERE content_key IS NULL) FROM audio_move
-- Applied once `python -m tools.move_audio` has moved every generation's
-- audio and every file's content into the object store (it says so in
-- audio_move, 012): until then this migration, and any after it, waits
-- (runtime/database.py), and the columns stay for the rows that still hold
-- their bytes.
ALTER TABLE prediction_files DROP CONSTRAINT prediction_files_content_kept;
ALTER TABLE generations DROP COLUMN audio;
ALTER TABLE prediction_files DROP COLUMN content;
ALTER TABLE prediction_files ALTER COLUMN content_key SET NOT NULL;
DROP TABLE audio_move;
