-- The indexes of the list query's user and created_at filters and its newest-first
-- sort (see order_history/queries.py).
--
-- As orders_listed_by_bucket (migration 0002) does for the id sort, each index
-- starts with what a page fixes (the user, the goods-count bucket) and goes on
-- in created_at order, so that each bucket above the threshold is one index
-- range in that order and the ranges merge without a sort, reading only the rows
-- the page shows, at any depth when paging by cursor. A user's orders by id, and
-- a created_at range by id, are read from the same indexes (created_at follows
-- the id up to the creation skew: see queries._window_rows), which saves the
-- consumer an index per order update.
--
-- No INCLUDE columns: every order update writes an entry into every index of
-- the table, so these stay small; a page reads its few rows from the table.
CREATE INDEX orders_listed_by_created ON orders (goods_count_bucket(goods_count), created_at, id)
    WHERE known AND NOT deleted AND goods_count > 0;
CREATE INDEX orders_listed_by_user_created ON orders (user_id, goods_count_bucket(goods_count), created_at, id)
    WHERE known AND NOT deleted AND goods_count > 0;
