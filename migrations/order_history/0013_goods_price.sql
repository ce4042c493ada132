-- The goods' price (goods events from schema_version 2; null for older ones),
-- shown by the order-history detail and compared by reconcile.
ALTER TABLE goods ADD COLUMN price_cents bigint;
