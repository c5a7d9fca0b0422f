-- Usage counts become one row per key and minute (and per key and hour), with a column per
-- result, named as in the batches: a key that is counted with two results in a minute takes
-- one row, not two, so a batch writes half the rows and index entries it did, and the tables
-- take about half the bytes. A result not counted is NULL. A result added to the filters
-- needs a column of its own, added by a later migration (and to `RESULTS` in db/usage.rs).
-- Keep it equivalent to the other folder's 0006_usage_by_key.sql.

CREATE TABLE usage_minutes_by_key (
    key_id TEXT NOT NULL,
    minute BIGINT NOT NULL,
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
    PRIMARY KEY (key_id, minute)
);
INSERT INTO usage_minutes_by_key (key_id, minute, owner, allowed, denied_checksum, denied_cors_backend_key, denied_disabled, denied_endpoint, denied_expired, denied_malformed, denied_missing, denied_not_yet_valid, denied_origin, denied_resource, denied_unknown, preflight_allowed, preflight_denied, public, unavailable, upstream_2xx, upstream_3xx, upstream_429, upstream_4xx, upstream_5xx)
SELECT key_id, minute, MAX(owner),
       SUM(CASE WHEN result = 'allowed' THEN count END),
       SUM(CASE WHEN result = 'denied_checksum' THEN count END),
       SUM(CASE WHEN result = 'denied_cors_backend_key' THEN count END),
       SUM(CASE WHEN result = 'denied_disabled' THEN count END),
       SUM(CASE WHEN result = 'denied_endpoint' THEN count END),
       SUM(CASE WHEN result = 'denied_expired' THEN count END),
       SUM(CASE WHEN result = 'denied_malformed' THEN count END),
       SUM(CASE WHEN result = 'denied_missing' THEN count END),
       SUM(CASE WHEN result = 'denied_not_yet_valid' THEN count END),
       SUM(CASE WHEN result = 'denied_origin' THEN count END),
       SUM(CASE WHEN result = 'denied_resource' THEN count END),
       SUM(CASE WHEN result = 'denied_unknown' THEN count END),
       SUM(CASE WHEN result = 'preflight_allowed' THEN count END),
       SUM(CASE WHEN result = 'preflight_denied' THEN count END),
       SUM(CASE WHEN result = 'public' THEN count END),
       SUM(CASE WHEN result = 'unavailable' THEN count END),
       SUM(CASE WHEN result = 'upstream_2xx' THEN count END),
       SUM(CASE WHEN result = 'upstream_3xx' THEN count END),
       SUM(CASE WHEN result = 'upstream_429' THEN count END),
       SUM(CASE WHEN result = 'upstream_4xx' THEN count END),
       SUM(CASE WHEN result = 'upstream_5xx' THEN count END)
FROM usage_minutes GROUP BY key_id, minute;
DROP TABLE usage_minutes;
ALTER TABLE usage_minutes_by_key RENAME TO usage_minutes;
CREATE INDEX usage_minutes_time ON usage_minutes (minute);
CREATE INDEX usage_minutes_owner ON usage_minutes (owner, minute);

CREATE TABLE usage_hours_by_key (
    key_id TEXT NOT NULL,
    hour BIGINT NOT NULL,
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
    PRIMARY KEY (key_id, hour)
);
INSERT INTO usage_hours_by_key (key_id, hour, owner, allowed, denied_checksum, denied_cors_backend_key, denied_disabled, denied_endpoint, denied_expired, denied_malformed, denied_missing, denied_not_yet_valid, denied_origin, denied_resource, denied_unknown, preflight_allowed, preflight_denied, public, unavailable, upstream_2xx, upstream_3xx, upstream_429, upstream_4xx, upstream_5xx)
SELECT key_id, hour, MAX(owner),
       SUM(CASE WHEN result = 'allowed' THEN count END),
       SUM(CASE WHEN result = 'denied_checksum' THEN count END),
       SUM(CASE WHEN result = 'denied_cors_backend_key' THEN count END),
       SUM(CASE WHEN result = 'denied_disabled' THEN count END),
       SUM(CASE WHEN result = 'denied_endpoint' THEN count END),
       SUM(CASE WHEN result = 'denied_expired' THEN count END),
       SUM(CASE WHEN result = 'denied_malformed' THEN count END),
       SUM(CASE WHEN result = 'denied_missing' THEN count END),
       SUM(CASE WHEN result = 'denied_not_yet_valid' THEN count END),
       SUM(CASE WHEN result = 'denied_origin' THEN count END),
       SUM(CASE WHEN result = 'denied_resource' THEN count END),
       SUM(CASE WHEN result = 'denied_unknown' THEN count END),
       SUM(CASE WHEN result = 'preflight_allowed' THEN count END),
       SUM(CASE WHEN result = 'preflight_denied' THEN count END),
       SUM(CASE WHEN result = 'public' THEN count END),
       SUM(CASE WHEN result = 'unavailable' THEN count END),
       SUM(CASE WHEN result = 'upstream_2xx' THEN count END),
       SUM(CASE WHEN result = 'upstream_3xx' THEN count END),
       SUM(CASE WHEN result = 'upstream_429' THEN count END),
       SUM(CASE WHEN result = 'upstream_4xx' THEN count END),
       SUM(CASE WHEN result = 'upstream_5xx' THEN count END)
FROM usage_hours GROUP BY key_id, hour;
DROP TABLE usage_hours;
ALTER TABLE usage_hours_by_key RENAME TO usage_hours;
CREATE INDEX usage_hours_time ON usage_hours (hour);
CREATE INDEX usage_hours_owner ON usage_hours (owner, hour);
