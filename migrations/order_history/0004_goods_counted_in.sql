-- goods_count is maintained by the projection instead of recounted (see
-- order_history/projections.py). To know how a goods event changes the counts,
-- the projection needs the state each goods row had before the event: the order
-- it was counted in, if it was live. PostgreSQL's RETURNING shows only the new
-- row, so the upsert keeps that in the row itself: counted_in_before is the order
-- this item was counted in before its last change (NULL: the row was new, or the
-- item was deleted). It is written only by that upsert and read only from its
-- RETURNING; the list query never looks at it.
ALTER TABLE goods ADD COLUMN counted_in_before bigint;
