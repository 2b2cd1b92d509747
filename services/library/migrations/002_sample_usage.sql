-- What each account stored, per UTC day and per key (the gateway's number for
-- the key, x-key-id; 0 when none was sent), metered once, by the statement
-- that stores the sample: the samples and their bytes (the upload as sent and
-- its normalized WAV). Kept when samples are deleted; gone with the account
-- (DeleteAccountSamples). The gateway reads it over gRPC for GET /v1/usage.
CREATE TABLE sample_usage (
    account_id bigint NOT NULL,
    day date NOT NULL,
    key_id bigint NOT NULL DEFAULT 0,
    samples bigint NOT NULL DEFAULT 0,
    bytes bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, day, key_id)
);

-- The samples stored so far, as usage of no key.
INSERT INTO sample_usage (account_id, day, key_id, samples, bytes)
    SELECT account_id, (create_time AT TIME ZONE 'UTC')::date, 0, count(*),
           sum(octet_length(original_audio) + octet_length(normalized_wav))
    FROM samples GROUP BY 1, 2;
