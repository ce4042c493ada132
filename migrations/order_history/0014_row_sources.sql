-- Each row explained (`order-history explain`).
--
-- orders, goods: where the event that last changed the row was read, its
-- partition and offset on the entity's topic (orders: order.events, goods:
-- goods.events), written by the same statement as the row and under the same
-- version guard (order_history/projection/columns.py, SOURCE). NULL for a
-- placeholder order (goods named it first) and for rows written before this
-- migration, until their next event. Nullable, no default: adding them rewrites
-- no row.
ALTER TABLE orders ADD COLUMN source_partition integer, ADD COLUMN source_offset bigint;
ALTER TABLE goods ADD COLUMN source_partition integer, ADD COLUMN source_offset bigint;

-- dead_letters: the entity a dead-lettered or parked record is about, filled as
-- it is recorded (order_history/projection/dead_letters.py, `subject`):
-- entity_id from its key (the aggregate id as a decimal string, as every
-- producer keys it), else its value's aggregate_id; order_id the order it
-- concerns (an order event's entity, a goods event's data.order_id). NULL
-- where the record does not say. Rows recorded before take entity_id from their
-- key here (and order_id, for order events); a goods record's order is in its
-- value, which SQL cannot read safely, so theirs stays NULL.
ALTER TABLE dead_letters ADD COLUMN entity_id bigint, ADD COLUMN order_id bigint;
UPDATE dead_letters
    SET entity_id = encode(message_key, 'escape')::bigint
    WHERE octet_length(message_key) BETWEEN 1 AND 18 AND encode(message_key, 'escape') ~ '^[0-9]+$';
UPDATE dead_letters SET order_id = entity_id WHERE entity_id IS NOT NULL AND topic LIKE '%order.events';
CREATE INDEX dead_letters_by_entity ON dead_letters (entity_id) WHERE entity_id IS NOT NULL;
CREATE INDEX dead_letters_by_order ON dead_letters (order_id) WHERE order_id IS NOT NULL;
