-- Orders with more than 10, 20 and 30 goods, each in id order, as one index range.
--
-- Migration 0003 did this for counts above 40. With these, the list query for a
-- threshold N below 40 merges the exact buckets N+1..T and the range of counts
-- above T, where T is the first of 10, 20, 30, 40 not below N: at most 11 index
-- ranges instead of up to 41, and a single range for N = 10, 20 or 30 (see
-- order_history/queries.py). An index holds only the orders above its count, so
-- a change to an order with at most 10 goods writes no entry into any of them.
CREATE INDEX orders_listed_over_10 ON orders (id)
    INCLUDE (user_id, created_at, goods_count)
    WHERE known AND NOT deleted AND goods_count > 10;
CREATE INDEX orders_listed_over_20 ON orders (id)
    INCLUDE (user_id, created_at, goods_count)
    WHERE known AND NOT deleted AND goods_count > 20;
CREATE INDEX orders_listed_over_30 ON orders (id)
    INCLUDE (user_id, created_at, goods_count)
    WHERE known AND NOT deleted AND goods_count > 30;
