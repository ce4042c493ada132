-- Freshness: how current the read model is, kept beside the positions so that
-- the API (which may query a streaming replica and never talks to Kafka) can
-- tell every answer's watermark and staleness (docs/freshness.md).
--
-- newest_occurred_at: the newest `occurred_at` among the events of the
-- partition applied so far (an event stamped in the future counts as occurring
-- when it was applied). Advanced by the statement that advances next_offset, in
-- the same transaction as the changes, and never moved back.
--
-- caught_up_at: the latest time at which the consumer saw the partition's log
-- end at or below the position applied: every event appended to the partition
-- before then is in the read model. Written by the consumer every
-- ORDER_HISTORY_FRESHNESS_INTERVAL while it is caught up, never moved back; NULL
-- until it first is.
--
-- Both NULL on a row created at assignment that has seen neither: staleness
-- unknown. Neither is indexed, so the updates stay HOT.
ALTER TABLE consumer_positions
    ADD COLUMN newest_occurred_at timestamptz,
    ADD COLUMN caught_up_at       timestamptz;
