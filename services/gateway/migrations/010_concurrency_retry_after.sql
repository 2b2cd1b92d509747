-- The wait a refusal for concurrency announces (Retry-After), estimated better.
-- It was the typical duration less the age of the oldest generation under way,
-- which is 0 (so 1 s at the edge) as soon as that one is overdue: a
-- generation stuck for minutes made every retry come back at once.
-- Now it is the soonest expected end (create_time + typical) among the
-- account's generations under way that are not overdue yet; when every one is
-- overdue, a typical duration. Typical is the mean of the account's last 20
-- successful generations (admission to end), or else of anyone's last 20;
-- with none anywhere, 0 (the edge says 1 s).

-- Anyone's last successful generations, newest first, without reading past the others.
CREATE INDEX generations_succeeded_newest ON generations (seq DESC) WHERE status = 'succeeded';

-- As in 007_generation_core.sql, but for the wait of a refusal for concurrency.
CREATE OR REPLACE FUNCTION admit_generation(
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
    typical double precision;
    soonest double precision;
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
        SELECT count(*) INTO under_way
            FROM generations WHERE account_id = new_account AND status IN ('queued', 'running');
        IF under_way >= most_active THEN
            refusal := 'concurrency';
            SELECT avg(extract(epoch FROM recent.end_time - recent.create_time)) INTO typical
                FROM (SELECT end_time, create_time FROM generations
                      WHERE account_id = new_account AND status = 'succeeded'
                      ORDER BY seq DESC LIMIT 20) AS recent;
            IF typical IS NULL THEN
                SELECT avg(extract(epoch FROM recent.end_time - recent.create_time)) INTO typical
                    FROM (SELECT end_time, create_time FROM generations
                          WHERE status = 'succeeded'
                          ORDER BY seq DESC LIMIT 20) AS recent;
            END IF;
            IF typical IS NULL THEN
                RETURN;  -- nothing to go by: wait_seconds 0
            END IF;
            SELECT min(typical - extract(epoch FROM clock_timestamp() - create_time)) INTO soonest
                FROM generations
                WHERE account_id = new_account AND status IN ('queued', 'running')
                  AND extract(epoch FROM clock_timestamp() - create_time) < typical;
            wait_seconds := coalesce(soonest, typical);
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
