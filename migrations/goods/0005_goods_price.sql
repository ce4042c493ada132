-- A goods item's optional price, in the currency's smallest unit (cents):
-- goods events carry it from schema_version 2 (shared/events/catalogue.py).
ALTER TABLE goods ADD COLUMN price_cents bigint CHECK (price_cents >= 0);
