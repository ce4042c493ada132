-- goods_count_bucket (migration 0002) was declared STRICT. PostgreSQL inlines a
-- SQL function into the expressions that use it only if that cannot change a
-- NULL result, and a CASE is not strict, so every write to an order called the
-- function through the SQL-function executor to compute its index entry: about
-- 7% of the consumer's database time (perf, 1M events). Without STRICT it is
-- inlined, in the index's expression and in the list query alike. The result is
-- the same for every non-NULL count, and goods_count is NOT NULL, so the index
-- built with the old definition stays valid.
ALTER FUNCTION goods_count_bucket(integer) CALLED ON NULL INPUT;
