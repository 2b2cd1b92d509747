-- Accounts and their API keys. A key is shown once, when it is made; only its
-- SHA-256 is stored, so a leaked table does not leak usable keys.
CREATE TABLE accounts (
    id bigserial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id bigserial PRIMARY KEY,
    account_id bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    -- Hex SHA-256 of the whole key: keys are looked up by it.
    key_hash text NOT NULL UNIQUE,
    -- The key's first characters, to tell keys apart in listings.
    prefix text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

CREATE INDEX api_keys_account_id ON api_keys (account_id);
