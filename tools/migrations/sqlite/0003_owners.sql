-- Owners with limits shared by all of their keys (`PUT /v1/owners/{owner}`): `limits` is the
-- JSON list as the admin API takes it, checked by the filter's compiler before it is stored.
-- An owner change is audited with the owner in `audit.owner` and an empty `key_id`.
-- Keep it equivalent to the other folder's 0003_owners.sql.
CREATE TABLE owners (
    owner TEXT PRIMARY KEY,
    limits TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
ALTER TABLE audit ADD COLUMN owner TEXT;
