-- Leak reports and the webhook outbox. Keep it equivalent to the other folder's
-- 0004_leaks_and_events.sql.

-- One row for each key a leak report named (`POST /v1/leaks`, `POST /v1/leaks/github`),
-- numbered like the change that acted on it: who reported it (an admin, or `github`), where
-- it was seen, and what was done (`disabled`, `expires`, or `none` for a key already disabled).
CREATE TABLE leaks (
    seq BIGINT PRIMARY KEY,
    key_id TEXT NOT NULL,
    at TEXT NOT NULL,
    reporter TEXT NOT NULL,
    source TEXT NOT NULL,
    action TEXT NOT NULL
);
CREATE INDEX leaks_key ON leaks (key_id, seq);
ALTER TABLE audit ADD COLUMN source TEXT;

-- Webhook events not yet delivered, one row per event and URL, written in the transaction of
-- the change they report (so an event is never lost, and never sent for a rolled-back change).
CREATE TABLE outbox (
    id TEXT NOT NULL,
    url TEXT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_ms BIGINT NOT NULL,
    delivered_at TEXT,
    last_error TEXT,
    PRIMARY KEY (id, url)
);
CREATE INDEX outbox_due ON outbox (next_ms) WHERE delivered_at IS NULL;

-- The end of each key in Unix milliseconds, for the `key.expiring` notices, and the notices
-- already written (each key, end and lead time once).
ALTER TABLE keys ADD COLUMN expires_ms BIGINT;
UPDATE keys SET expires_ms = (extract(epoch FROM (entry::jsonb ->> 'expires_at')::timestamptz) * 1000)::BIGINT
    WHERE entry::jsonb ->> 'expires_at' IS NOT NULL;
CREATE INDEX keys_expires ON keys (expires_ms) WHERE expires_ms IS NOT NULL;
CREATE TABLE expiry_notices (
    key_id TEXT NOT NULL,
    expires_ms BIGINT NOT NULL,
    ahead TEXT NOT NULL,
    PRIMARY KEY (key_id, expires_ms, ahead)
);
