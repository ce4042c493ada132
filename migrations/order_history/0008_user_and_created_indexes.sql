-- The indexes of the list query's user and created_at filters and its newest-first
-- sort (see order_history/queries.py).
--
-- As orders_listed_by_bucket (migration 0002) does for the id sort, each index
-- starts with what a page fixes (the user, a goods-count band) and goes on in
-- created_at order, so that each band above the threshold is one index range in
-- that order and the ranges merge without a sort, reading only the rows the page
-- shows, at any depth when paging by cursor. A user's orders by id, and a
-- created_at range by id, are read from the same indexes (created_at follows the
-- id up to the creation skew: see queries._window_rows), which saves the
-- consumer an index per order update.
--
-- Bands, not the 51 buckets: a page merges one index range per band above the
-- threshold, and 12 ranges cost a fraction of 51 to start. The band that holds
-- threshold + 1 is filtered by goods_count (read from the table), so it skips
-- its orders at or below the threshold, as the wide buckets do above 40.
-- order_history/queries.py mirrors the function (BAND_UPPER); a test keeps the
-- two equal. Not STRICT, so that PostgreSQL inlines it (see migration 0005).
CREATE FUNCTION goods_count_band(n integer) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN n <= 3 THEN n
        WHEN n <= 5 THEN 4
        WHEN n <= 8 THEN 5
        WHEN n <= 10 THEN 6
        WHEN n <= 15 THEN 7
        WHEN n <= 20 THEN 8
        WHEN n <= 30 THEN 9
        WHEN n <= 40 THEN 10
        WHEN n <= 100 THEN 11
        ELSE 12
    END
$$;

-- No INCLUDE columns: every order update writes an entry into every index of
-- the table, so these stay small; a page reads its few rows from the table.
CREATE INDEX orders_listed_by_created ON orders (goods_count_band(goods_count), created_at, id)
    WHERE known AND NOT deleted AND goods_count > 0;
CREATE INDEX orders_listed_by_user_created ON orders (user_id, goods_count_band(goods_count), created_at, id)
    WHERE known AND NOT deleted AND goods_count > 0;
