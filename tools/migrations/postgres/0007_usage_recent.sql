-- Batches add to a table of recent minutes kept in minute order: a batch's keys all fall in
-- one minute, so their rows sit together on a few pages instead of one page per key, as they
-- do in usage_minutes (in key order, for reading one key's series). The key service moves
-- these rows into usage_minutes in key order, many minutes at a time, so each of a key's
-- pages there is written once per move rather than once per batch. Readers add both tables.
-- Keep it equivalent to the other folder's 0007_usage_recent.sql.

CREATE TABLE usage_recent (
    minute BIGINT NOT NULL,
    key_id TEXT NOT NULL,
    owner TEXT,
    allowed BIGINT,
    denied_checksum BIGINT,
    denied_cors_backend_key BIGINT,
    denied_disabled BIGINT,
    denied_endpoint BIGINT,
    denied_expired BIGINT,
    denied_malformed BIGINT,
    denied_missing BIGINT,
    denied_not_yet_valid BIGINT,
    denied_origin BIGINT,
    denied_resource BIGINT,
    denied_unknown BIGINT,
    preflight_allowed BIGINT,
    preflight_denied BIGINT,
    public BIGINT,
    unavailable BIGINT,
    upstream_2xx BIGINT,
    upstream_3xx BIGINT,
    upstream_429 BIGINT,
    upstream_4xx BIGINT,
    upstream_5xx BIGINT,
    PRIMARY KEY (minute, key_id)
);
