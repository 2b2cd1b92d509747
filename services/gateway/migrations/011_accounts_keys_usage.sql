-- Issue 24: accounts that operators manage, keys with scopes, browser tokens,
-- usage metered per account, key and day, and monthly quotas held by the
-- statement that admits a generation.

-- Accounts: disabled (no key works, no generation is admitted), deleted (a
-- tombstone, its data purged), limits that override the gateway's settings,
-- and monthly quotas (NULL: the gateway's setting; no quota).
ALTER TABLE accounts
    ADD COLUMN disabled_at timestamptz,
    ADD COLUMN deleted_at timestamptz,
    -- A deleted account's data is purged once more after this time, to catch
    -- what other replicas' key caches let in meanwhile; NULL once done.
    ADD COLUMN purge_again_at timestamptz,
    ADD COLUMN generations_per_second double precision,
    ADD COLUMN generation_burst integer,
    ADD COLUMN concurrent_generations integer,
    ADD COLUMN monthly_audio_seconds double precision,
    ADD COLUMN monthly_characters bigint,
    ADD COLUMN monthly_generations bigint;
-- A deleted account's name may be given to a new one.
ALTER TABLE accounts DROP CONSTRAINT accounts_name_key;
CREATE UNIQUE INDEX accounts_live_name ON accounts (name) WHERE deleted_at IS NULL;
CREATE INDEX accounts_purge_again ON accounts (purge_again_at) WHERE purge_again_at IS NOT NULL;

-- Keys: a public id ("key_" and 16 hex digits: random, so that it says
-- nothing of other accounts' keys), a name, scopes, an expiry, when last used
-- (to within the key cache's time), and browser tokens (kind
-- 'browser_token'), each minted by a key (parent_id) and stopping with it.
ALTER TABLE api_keys
    ADD COLUMN public_id text,
    ADD COLUMN name text NOT NULL DEFAULT '',
    ADD COLUMN scopes text[] NOT NULL
        DEFAULT ARRAY['library:read', 'library:write', 'generate', 'history', 'predictions', 'usage:read', 'keys'],
    ADD COLUMN kind text NOT NULL DEFAULT 'key' CHECK (kind IN ('key', 'browser_token')),
    ADD COLUMN parent_id bigint REFERENCES api_keys (id) ON DELETE CASCADE,
    ADD COLUMN last_used_at timestamptz,
    ADD COLUMN expires_at timestamptz;
UPDATE api_keys SET public_id = 'key_' || substr(md5(random()::text || id::text || clock_timestamp()::text), 1, 16);
ALTER TABLE api_keys ALTER COLUMN public_id SET NOT NULL;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_public_id_key UNIQUE (public_id);
-- Keys made from now on say their scopes.
ALTER TABLE api_keys ALTER COLUMN scopes DROP DEFAULT;
CREATE INDEX api_keys_tokens_expiry ON api_keys (expires_at) WHERE kind = 'browser_token';

-- Which key admitted a generation (0: none, before keys had numbers here), and
-- the seconds the synth providers took to make its audio.
ALTER TABLE generations
    ADD COLUMN key_id bigint NOT NULL DEFAULT 0,
    ADD COLUMN synthesis_seconds double precision NOT NULL DEFAULT 0;

-- Usage, metered once where the work is done: a generation counts on the UTC
-- day it was admitted, once with its characters by admit_generation, once
-- with its audio and synthesis seconds by the statement that stores its
-- success. Kept when generations are deleted (quotas must not be reset by
-- deleting the history); gone with the account.
CREATE TABLE usage_daily (
    account_id bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    day date NOT NULL,
    key_id bigint NOT NULL DEFAULT 0,
    generations bigint NOT NULL DEFAULT 0,
    characters bigint NOT NULL DEFAULT 0,
    audio_seconds double precision NOT NULL DEFAULT 0,
    synthesis_seconds double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, day, key_id)
);
-- The history so far, as usage of no key.
INSERT INTO usage_daily (account_id, day, key_id, generations, characters, audio_seconds)
    SELECT account_id, (create_time AT TIME ZONE 'UTC')::date, 0, count(*), sum(char_length(input)),
           sum(CASE WHEN status = 'succeeded' THEN audio_duration_seconds ELSE 0 END)
    FROM generations GROUP BY 1, 2;

DROP FUNCTION admit_generation(text, bigint, text, text, jsonb, jsonb, jsonb, text, text, text,
                               double precision, double precision, integer);

-- As in 010_concurrency_retry_after.sql, and besides:
-- * the account must be neither deleted (refusal 'deleted') nor disabled
--   ('disabled'): this holds on every replica at once, whatever its key cache;
-- * the account's own limits, where set, replace per_second, burst and most_active;
-- * its monthly quotas (calendar months, UTC), counted under the allowance
--   row's lock, so that they hold across replicas: a generation is refused
--   ('quota', naming it in `quota`, with its limit and what is used) when one
--   more would pass the generations quota, its characters the characters
--   quota, or when the audio seconds of this month's generations have reached
--   that quota (a generation's audio is known once it ends: those under way
--   when the quota is reached may pass it). wait_seconds is then the time
--   until reset_time, the start of the next month;
-- * an admitted generation names its key and is metered in usage_daily.
CREATE FUNCTION admit_generation(
    new_id text,
    new_account bigint,
    new_key bigint,
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
    OUT wait_seconds double precision,
    OUT quota text,
    OUT quota_limit double precision,
    OUT quota_used double precision,
    OUT reset_time timestamptz
) LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    account accounts%ROWTYPE;
    available double precision;
    under_way integer;
    typical double precision;
    soonest double precision;
    month_local timestamp;
    used_generations bigint;
    used_characters bigint;
    used_audio double precision;
    script_characters integer := char_length(new_input);
    created timestamptz;
BEGIN
    refusal := '';
    wait_seconds := 0;
    quota := '';
    SELECT * INTO account FROM accounts WHERE id = new_account;
    IF NOT FOUND OR account.deleted_at IS NOT NULL THEN
        refusal := 'deleted';
        RETURN;
    END IF;
    IF account.disabled_at IS NOT NULL THEN
        refusal := 'disabled';
        RETURN;
    END IF;
    per_second := coalesce(account.generations_per_second, per_second);
    burst := coalesce(account.generation_burst, burst);
    most_active := coalesce(account.concurrent_generations, most_active);
    INSERT INTO generation_allowances (account_id, tokens, refilled_at)
        VALUES (new_account, burst, clock_timestamp())
        ON CONFLICT (account_id) DO NOTHING;
    SELECT least(burst, tokens + greatest(per_second, 0) * greatest(0, extract(epoch FROM clock_timestamp() - refilled_at)))
        INTO available
        FROM generation_allowances WHERE account_id = new_account FOR UPDATE;
    IF account.monthly_generations IS NOT NULL OR account.monthly_characters IS NOT NULL
       OR account.monthly_audio_seconds IS NOT NULL THEN
        month_local := date_trunc('month', now() AT TIME ZONE 'UTC');
        reset_time := (month_local + interval '1 month') AT TIME ZONE 'UTC';
        SELECT coalesce(sum(u.generations), 0), coalesce(sum(u.characters), 0), coalesce(sum(u.audio_seconds), 0)
            INTO used_generations, used_characters, used_audio
            FROM usage_daily u WHERE u.account_id = new_account AND u.day >= month_local::date;
        IF account.monthly_generations IS NOT NULL AND used_generations + 1 > account.monthly_generations THEN
            quota := 'generations';
            quota_limit := account.monthly_generations;
            quota_used := used_generations;
        ELSIF account.monthly_characters IS NOT NULL AND used_characters + script_characters > account.monthly_characters THEN
            quota := 'characters';
            quota_limit := account.monthly_characters;
            quota_used := used_characters;
        ELSIF account.monthly_audio_seconds IS NOT NULL AND used_audio >= account.monthly_audio_seconds THEN
            quota := 'audio_seconds';
            quota_limit := account.monthly_audio_seconds;
            quota_used := used_audio;
        END IF;
        IF quota <> '' THEN
            refusal := 'quota';
            wait_seconds := greatest(0, extract(epoch FROM reset_time - clock_timestamp()));
            RETURN;
        END IF;
    END IF;
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
    INSERT INTO generations (id, account_id, key_id, status, input, model, speakers, speaker_names, parameters,
                             visibility, collection, share_token)
        VALUES (new_id, new_account, new_key, 'queued', new_input, new_model, new_speakers, new_speaker_names,
                new_parameters, new_visibility, new_collection, new_share_token)
        RETURNING create_time INTO created;
    INSERT INTO usage_daily (account_id, day, key_id, generations, characters)
        VALUES (new_account, (created AT TIME ZONE 'UTC')::date, new_key, 1, script_characters)
        ON CONFLICT (account_id, day, key_id) DO UPDATE
        SET generations = usage_daily.generations + 1, characters = usage_daily.characters + EXCLUDED.characters;
END
$$;
