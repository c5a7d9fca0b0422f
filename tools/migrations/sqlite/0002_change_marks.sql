-- The mark of every change number, carried in feed cursors (`<database id>.<mark>.<number>`):
-- the database's epoch when the change was written. `meta.epoch` is 8 random hex characters
-- that every service process draws anew at start, so a copy of the database restored from a
-- backup and then written past a filter's cursor gives that number another mark, and the
-- cursor answers `reset` instead of skipping changes. The changes made before this migration
-- get a random mark each.
-- Keep it equivalent to ../postgres/0002_change_marks.sql.
CREATE TABLE marks (seq BIGINT PRIMARY KEY, mark TEXT NOT NULL);
INSERT INTO meta (name, value) VALUES ('epoch', lower(hex(randomblob(4))));
INSERT INTO marks (seq, mark)
WITH RECURSIVE n(seq) AS (SELECT 1 UNION ALL SELECT seq + 1 FROM n WHERE seq < (SELECT last FROM feed WHERE id = 1))
SELECT seq, lower(hex(randomblob(4))) FROM n WHERE seq <= (SELECT last FROM feed WHERE id = 1);
