-- Per-account limits on generations, held by PostgreSQL so that they hold
-- across every gateway replica: a rate (a token bucket per account) and the
-- generations an account may have under way (queued or running) at once.
-- A request is admitted and stored by one call of admit_generation.

CREATE TABLE generation_allowances (
    account_id bigint PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    -- The rate limit's bucket: tokens left as of refilled_at (refilled at the
    -- configured rate, up to the burst; one token per admitted generation).
    tokens double precision NOT NULL,
    refilled_at timestamptz NOT NULL
);

-- What admission counts: an account's generations under way.
CREATE INDEX generations_account_under_way ON generations (account_id) WHERE status IN ('queued', 'running');

-- Admit one generation of an account and store it as queued, or refuse it.
-- refusal is '' when admitted; 'rate' when the account is over its rate
-- (wait_seconds: until its next token); 'concurrency' when it has
-- most_active generations under way (wait_seconds: until the oldest of them
-- should end, from how long the account's recent generations took).
-- per_second <= 0 or most_active <= 0 turns that limit off.
--
-- The allowance row's lock makes an account's admissions one at a time on
-- every replica (other accounts are not held up); it is released when the
-- statement that called this ends. VOLATILE plpgsql under READ COMMITTED
-- takes a fresh snapshot per query, so the count after the lock sees every
-- admission committed before it.
CREATE FUNCTION admit_generation(
    new_id text,
    new_account bigint,
    new_input text,
    new_model text,
    new_speakers jsonb,
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
    INSERT INTO generations (id, account_id, status, input, model, speakers, parameters,
                             visibility, collection, share_token)
        VALUES (new_id, new_account, 'queued', new_input, new_model, new_speakers, new_parameters,
                new_visibility, new_collection, new_share_token);
END
$$;
