-- The relay deletes the rows it published, in the short transaction that
-- follows Kafka's acknowledgement, instead of marking them published and
-- purging them a day later. The outbox then holds only its backlog, whatever
-- the uptime: an UPDATE per published row wrote a second copy of the row (and
-- an index entry) that a DELETE does not, and kept a day of events that Kafka
-- holds anyway (docs/benchmarks.md, "Soak: 15 minutes of mixed load, before and
-- after deleting published outbox rows").
-- The relay reads the oldest rows by the primary key.
DELETE FROM outbox WHERE published_at IS NOT NULL;
DROP INDEX outbox_unpublished;
DROP INDEX outbox_published_at;
ALTER TABLE outbox DROP COLUMN published_at;
