-- NOTIFY inside a writing transaction holds a database-wide lock through that
-- transaction's commit, serialising every write (measured: 502 tx/s with the
-- trigger vs 2,059 without, pgbench, 64 clients). The API now sends a
-- coalesced NOTIFY after its commits instead (shared/outbox.py OutboxNotifier);
-- the relay still LISTENs, and polls as a fallback.
DROP TRIGGER outbox_notify ON outbox;
DROP FUNCTION outbox_notify();
