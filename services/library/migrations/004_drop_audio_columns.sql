-- requires: SELECT moved AND NOT EXISTS (SELECT 1 FROM samples WHERE original_key IS NULL) FROM audio_move
-- Applied once `python -m tools.move_audio` has moved every sample's audio
-- into the object store (it says so in audio_move, 003): until then this
-- migration, and any after it, waits (runtime/database.py), and the columns
-- stay for the rows that still hold their audio.
ALTER TABLE samples DROP CONSTRAINT samples_audio_kept;
ALTER TABLE samples DROP COLUMN original_audio;
ALTER TABLE samples DROP COLUMN normalized_wav;
ALTER TABLE samples ALTER COLUMN original_key SET NOT NULL;
ALTER TABLE samples ALTER COLUMN normalized_key SET NOT NULL;
DROP TABLE audio_move;
