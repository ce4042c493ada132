-- goods_count_bucket (migration 0002) was declared STRICT. PostgreSQL inlines a
-- SQL function into the expressions that use it only if that cannot change a
-- NULL result, and a CASE is not strict, so every write to an order called the
-- function through the SQL-function executor to compute its index entry: about
-- 7% of the consumer's database time (perf, 1M events). Without STRICT it is
-- inlined, in the index's expression and in the list query alike. The result is
-- the same for every non-NULL count, and goods_count is NOT NULL, so the index
-- built with the old definition stays valid.
CREATE OR REPLACE FUNCTION goods_count_bucket(n integer) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
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
