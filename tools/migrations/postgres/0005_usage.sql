-- Usage per key (`POST /v1/filter/usage` from the filters). Keep it equivalent to the other
-- folder's 0005_usage.sql.

-- Batch ids already counted, so that a batch sent again (its answer lost) is counted once.
-- Kept for two days.
CREATE TABLE usage_batches (
    id TEXT PRIMARY KEY,
    received_ms BIGINT NOT NULL
);
CREATE INDEX usage_batches_received ON usage_batches (received_ms);

-- Counts per key, minute (Unix milliseconds of its start) and result: an outcome name
-- (`allowed`, `denied_expired`, `unavailable`, ...) or an upstream class (`upstream_2xx`).
-- `key_id` is `(unkeyed)` for requests without a key the filter knows, `(other)` for keys
-- past a filter's `usage.max_keys`. `owner` is the key's owner when counted.
CREATE TABLE usage_minutes (
    key_id TEXT NOT NULL,
    minute BIGINT NOT NULL,
    result TEXT NOT NULL,
    owner TEXT,
    count BIGINT NOT NULL,
    PRIMARY KEY (key_id, minute, result)
);
CREATE INDEX usage_minutes_time ON usage_minutes (minute);
CREATE INDEX usage_minutes_owner ON usage_minutes (owner, minute);

-- The same, rolled up into hours once older than `--usage-minutes-days`.
CREATE TABLE usage_hours (
    key_id TEXT NOT NULL,
    hour BIGINT NOT NULL,
    result TEXT NOT NULL,
    owner TEXT,
    count BIGINT NOT NULL,
    PRIMARY KEY (key_id, hour, result)
);
CREATE INDEX usage_hours_time ON usage_hours (hour);
CREATE INDEX usage_hours_owner ON usage_hours (owner, hour);

-- The minute a key was last presented (Unix milliseconds), written at most once a minute.
ALTER TABLE keys ADD COLUMN last_used_ms BIGINT;
CREATE INDEX keys_last_used ON keys (last_used_ms);
