-- A file's metadata comes back as a protobuf Struct in every answer that holds
-- the file, GET /v1/files included. Before the gateway checked it
-- (generation/metadata.py), metadata nested deeper than 32 levels
-- (GATEWAY_MAX_METADATA_DEPTH at most) or holding a number beyond a double's
-- range could be stored, and from then on every listing of its account failed.
-- Such metadata can never be read back: it becomes {} (the file itself stays).
-- Running this again changes nothing.
UPDATE prediction_files SET metadata = '{}'
WHERE jsonb_path_exists(metadata, 'strict $.**{33}')
   OR jsonb_path_exists(
        metadata,
        'strict $.** ? (@.type() == "number" && (@ > 1.7976931348623157e308 || @ < -1.7976931348623157e308))'
      );
