-- Streaming and long scripts. A generation whose caller went away (closed the
-- connection, cancelled the RPC) ends 'canceled', a status 005_predictions.sql
-- already allows.

-- Generations Dia needed for the script: more than 1 for a script longer than its window.
ALTER TABLE generations ADD COLUMN chunks integer NOT NULL DEFAULT 1;
