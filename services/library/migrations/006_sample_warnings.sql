-- What the upload's check found that may make a sample clone poorly (the STT service's CheckSample):
-- [{"code": "clipping", "message": "..."}], empty when nothing was found or the check could not run.
ALTER TABLE samples ADD COLUMN warnings jsonb NOT NULL DEFAULT '[]';
