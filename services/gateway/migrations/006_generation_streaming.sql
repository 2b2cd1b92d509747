-- Streaming and long scripts. A generation whose caller went away (closed the connection, cancelled the RPC) ends
-- 'canceled': its generation was stopped. (The predictions migration allows the same status;
-- this one stands on its own, whichever is applied first.)
ALTER TABLE generations DROP CONSTRAINT IF EXISTS generations_status_check;
ALTER TABLE generations ADD CONSTRAINT generations_status_check
    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'canceled'));

-- Generations Dia needed for the script: more than 1 for a script longer than its window.
ALTER TABLE generations ADD COLUMN IF NOT EXISTS chunks integer NOT NULL DEFAULT 1;
