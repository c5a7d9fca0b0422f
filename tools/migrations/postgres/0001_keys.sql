-- The key service's first schema (PostgreSQL). Keep it equivalent to ../sqlite/0001_keys.sql.
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta (name, value) VALUES ('database_id', replace(gen_random_uuid()::text, '-', ''));

CREATE TABLE feed (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    last BIGINT NOT NULL,
    floor BIGINT NOT NULL
);
INSERT INTO feed (id, last, floor) VALUES (1, 0, 0);

CREATE TABLE keys (
    id TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    name TEXT,
    owner TEXT,
    entry TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX keys_owner ON keys (owner, id);

CREATE TABLE key_origins (
    origin TEXT NOT NULL,
    key_id TEXT NOT NULL,
    PRIMARY KEY (origin, key_id)
);
CREATE INDEX key_origins_key ON key_origins (key_id);

CREATE TABLE changes (
    seq BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    origins TEXT NOT NULL
);
CREATE INDEX changes_seq ON changes (seq);

CREATE TABLE audit (
    seq BIGINT PRIMARY KEY,
    at TEXT NOT NULL,
    admin TEXT NOT NULL,
    action TEXT NOT NULL,
    key_id TEXT NOT NULL,
    successor TEXT
);
