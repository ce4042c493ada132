-- Ids the sequence has not handed out yet whose read-model rows `order-history
-- reconcile --repair` removed (written by `order resync --remove-unassigned`).
--
-- Such a row came from events this database does not hold: another producer's,
-- or its own from before a restore from backup, which set the sequence back.
-- The repair removed it from the read model at the version it had there (a
-- tombstone, like a delete). When the sequence later hands the id out, the new
-- entity starts at version + 1 instead of 1, so that the read model's version
-- guard lets it in while every copy of the removed row's events, at or below
-- that version, stays out (README, "Repair"). Rows are never deleted: once the
-- id is handed out, the row is not read again.
CREATE TABLE version_floors (
    id      bigint  PRIMARY KEY,
    version integer NOT NULL CHECK (version > 0 AND version < 2147483647)
);
