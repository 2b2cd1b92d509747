-- The key that signs generations' audio URLs (generation/audio_urls.py): one row,
-- made by the first gateway that starts and read by every other, so that any
-- replica checks a URL another signed without sharing a setting.
CREATE TABLE url_signing_key (
    only_one boolean PRIMARY KEY DEFAULT true CHECK (only_one),
    key bytea NOT NULL CHECK (octet_length(key) >= 32),
    create_time timestamptz NOT NULL DEFAULT now()
);
