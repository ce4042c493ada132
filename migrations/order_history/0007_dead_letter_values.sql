-- Dead letters keep the message itself, so that `order-history dlq show` can
-- print it and `dlq replay` can apply it (after an upcaster or a fix is
-- deployed) without reading the DLQ topic back. Rows recorded before this
-- migration have no value: replay reports them as such.
ALTER TABLE dead_letters ADD COLUMN message_key bytea, ADD COLUMN message_value bytea;
