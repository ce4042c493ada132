-- The list query as a merge of id-ordered index ranges (see order_history/queries.py).
--
-- goods_count_bucket maps a count to a bucket: counts 1..40 each have their own
-- bucket, larger counts share geometrically growing ones. One index on
-- (bucket, id) then holds, for every bucket, its orders in id order: the query
-- for "goods_count > N ORDER BY id" merges the buckets above N (PostgreSQL's
-- Merge Append), reading only as many index entries as the page needs.
-- order_history/queries.py mirrors this function; a test keeps the two equal.
CREATE FUNCTION goods_count_bucket(n integer) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $$
    SELECT CASE
        WHEN n <= 40 THEN n
        WHEN n <= 48 THEN 41
        WHEN n <= 64 THEN 42
        WHEN n <= 96 THEN 43
        WHEN n <= 128 THEN 44
        WHEN n <= 192 THEN 45
        WHEN n <= 256 THEN 46
        WHEN n <= 512 THEN 47
        WHEN n <= 1024 THEN 48
        WHEN n <= 4096 THEN 49
        WHEN n <= 65536 THEN 50
        ELSE 51
    END
$$;

DROP INDEX orders_listed_by_count;
CREATE INDEX orders_listed_by_bucket ON orders (goods_count_bucket(goods_count), id)
    INCLUDE (user_id, created_at, goods_count)
    WHERE known AND NOT deleted AND goods_count > 0;
