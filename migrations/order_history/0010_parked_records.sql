-- Parked records: what the consumer could neither apply nor copy to its DLQ
-- topic (a record with neither key nor value, one too large for the dead-letter
-- producer, a DLQ topic that is missing or refuses it, a batch the client
-- cannot read, or one an operator skipped by hand). A parked record is a row of
-- dead_letters that is not on the DLQ topic: `parked_reason` says why, beside
-- `reason` (why it was not applied). The consumer advances its position past a
-- record in the transaction that records it, so no record holds its partition
-- (docs/reliability.md, "Every record on a topic").
--
-- `message_key` and `message_value` keep at most the first bytes of large
-- records (order_history/dead_letters.py says how many); `key_size`,
-- `value_size` and `value_sha256` describe the whole record (NULL where it had
-- none, or could not be read).
ALTER TABLE dead_letters
    ADD COLUMN parked        boolean NOT NULL DEFAULT false,
    ADD COLUMN parked_reason text,
    ADD COLUMN key_size      integer,
    ADD COLUMN value_size    integer,
    ADD COLUMN value_sha256  bytea;
