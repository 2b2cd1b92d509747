-- The history stays a history: what the hosted predictor's client asked of a
-- prediction moves to a table of its own (predictions), and the lease of a
-- generation run in the background to another (generation_jobs).

CREATE TABLE predictions (
    generation_id text PRIMARY KEY REFERENCES generations (id) ON DELETE CASCADE,
    -- The model and version as the client named them ("nari-labs/dia", 64 hex digits).
    model text NOT NULL,
    version text NOT NULL,
    -- The input as sent (PredictionInput in proto JSON), answered back as it was.
    input jsonb NOT NULL,
    webhook text NOT NULL DEFAULT '',
    webhook_events_filter jsonb NOT NULL DEFAULT '[]'
);

CREATE TABLE generation_jobs (
    generation_id text PRIMARY KEY REFERENCES generations (id) ON DELETE CASCADE,
    -- The gateway process running it ('' once it is over), and when it last said it still is:
    -- another process takes over once that is too long ago.
    runner text NOT NULL,
    runner_seen timestamptz NOT NULL DEFAULT now(),
    -- Times another process took it over and generated it again.
    resumes integer NOT NULL DEFAULT 0
);
CREATE INDEX generation_jobs_leases ON generation_jobs (runner_seen) WHERE runner <> '';

INSERT INTO predictions (generation_id, model, version, input, webhook, webhook_events_filter)
    SELECT id, prediction->>'model', prediction->>'version', prediction->'input',
           coalesce(prediction->>'webhook', ''), coalesce(prediction->'webhook_events_filter', '[]')
    FROM generations WHERE prediction IS NOT NULL;
INSERT INTO generation_jobs (generation_id, runner, runner_seen, resumes)
    SELECT id, CASE WHEN status IN ('queued', 'running') THEN runner ELSE '' END,
           coalesce(runner_seen, '-infinity'), coalesce((prediction->>'resumes')::int, 0)
    FROM generations WHERE prediction IS NOT NULL;

DROP INDEX generations_predictions_under_way;
ALTER TABLE generations DROP COLUMN prediction, DROP COLUMN runner, DROP COLUMN runner_seen;

-- The speaker_name of each cloned sample when the generation was admitted: {"S1": "Ada"}.
ALTER TABLE generations ADD COLUMN speaker_names jsonb NOT NULL DEFAULT '{}';
-- Signed audio URLs carry this number: raising it (a generation made private) revokes every URL handed out.
ALTER TABLE generations ADD COLUMN url_epoch integer NOT NULL DEFAULT 0;

DROP FUNCTION admit_generation(text, bigint, text, text, jsonb, jsonb, text, text, text,
                               double precision, double precision, integer);

-- As in 004_generation_admission.sql, storing the speakers' names too. The
-- id may be the caller's: a taken one fails the insert (unique violation),
-- which rolls the allowance's update back with it.
CREATE FUNCTION admit_generation(
    new_id text,
    new_account bigint,
    new_input text,
    new_model text,
    new_speakers jsonb,
    new_speaker_names jsonb,
    new_parameters jsonb,
    new_visibility text,
    new_collection text,
    new_share_token text,
    per_second double precision,
    burst double precision,
    most_active integer,
    OUT refusal text,
    OUT wait_seconds double precision
) LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    available double precision;
    under_way integer;
    oldest timestamptz;
    typical double precision;
BEGIN
    refusal := '';
    wait_seconds := 0;
    INSERT INTO generation_allowances (account_id, tokens, refilled_at)
        VALUES (new_account, burst, clock_timestamp())
        ON CONFLICT (account_id) DO NOTHING;
    SELECT least(burst, tokens + greatest(per_second, 0) * greatest(0, extract(epoch FROM clock_timestamp() - refilled_at)))
        INTO available
        FROM generation_allowances WHERE account_id = new_account FOR UPDATE;
    IF per_second > 0 AND available < 1 THEN
        refusal := 'rate';
        wait_seconds := (1 - available) / per_second;
        RETURN;
    END IF;
    IF most_active > 0 THEN
        SELECT count(*), min(create_time) INTO under_way, oldest
            FROM generations WHERE account_id = new_account AND status IN ('queued', 'running');
        IF under_way >= most_active THEN
            SELECT avg(extract(epoch FROM recent.end_time - recent.create_time)) INTO typical
                FROM (SELECT end_time, create_time FROM generations
                      WHERE account_id = new_account AND status = 'succeeded'
                      ORDER BY seq DESC LIMIT 20) AS recent;
            refusal := 'concurrency';
            wait_seconds := greatest(0, coalesce(typical, 0) - extract(epoch FROM clock_timestamp() - oldest));
            RETURN;
        END IF;
    END IF;
    UPDATE generation_allowances SET tokens = greatest(available - 1, 0), refilled_at = clock_timestamp()
        WHERE account_id = new_account;
    INSERT INTO generations (id, account_id, status, input, model, speakers, speaker_names, parameters,
                             visibility, collection, share_token)
        VALUES (new_id, new_account, 'queued', new_input, new_model, new_speakers, new_speaker_names, new_parameters,
                new_visibility, new_collection, new_share_token);
END
$$;
