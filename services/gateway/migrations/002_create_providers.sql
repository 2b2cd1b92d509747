-- The synth providers that announced themselves with heartbeats. Kept in
-- PostgreSQL so every gateway replica sees the same providers.
CREATE TABLE providers (
    provider_id text PRIMARY KEY,
    address text NOT NULL,
    -- [{"id": "nari-labs/Dia-1.6B-0626", "features": ["voice-cloning", "dialogue"]}]
    models jsonb NOT NULL DEFAULT '[]',
    capacity integer NOT NULL DEFAULT 0,
    load integer NOT NULL DEFAULT 0,
    first_seen timestamptz NOT NULL DEFAULT now(),
    last_seen timestamptz NOT NULL DEFAULT now()
);
