-- Orders with more than 40 goods, in id order, as one index range.
--
-- For a threshold below 40, the list query used to merge one index range per
-- bucket above it, including the eleven wide buckets of counts over 40 (one
-- index descent each, mostly for a handful of rows). With this index, every
-- count above 40 is one more id-ordered input to the merge: threshold 30 merges
-- 11 inputs instead of 21. It holds only the orders with more than 40 goods.
-- Thresholds of 40 and more still use the wide buckets of 0002.
CREATE INDEX orders_listed_over_40 ON orders (id)
    INCLUDE (user_id, created_at, goods_count)
    WHERE known AND NOT deleted AND goods_count > 40;
