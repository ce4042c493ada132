-- The indexes of the list query's filters and sorts (see order_history/queries.py).
--
-- As with orders_listed_by_bucket (migration 0002), every index starts with
-- what a page fixes (the user, the goods-count bucket) and goes on with the
-- page's order, so that each bucket is one index range in that order and the
-- buckets above the threshold merge without a sort, reading only the rows the
-- page shows: O(limit) at any depth when paging by cursor.
--
-- orders_listed_by_created: every user's orders, by created_at (sort=-created_at
-- reads it backwards; a created_at range is a range of it).
CREATE INDEX orders_listed_by_created ON orders (goods_count_bucket(goods_count), created_at, id)
    INCLUDE (user_id, goods_count)
    WHERE known AND NOT deleted AND goods_count > 0;
-- orders_listed_by_user: one user's orders, by id.
CREATE INDEX orders_listed_by_user ON orders (user_id, goods_count_bucket(goods_count), id)
    INCLUDE (created_at, goods_count)
    WHERE known AND NOT deleted AND goods_count > 0;
-- orders_listed_by_user_created: one user's orders, by created_at.
CREATE INDEX orders_listed_by_user_created ON orders (user_id, goods_count_bucket(goods_count), created_at, id)
    INCLUDE (goods_count)
    WHERE known AND NOT deleted AND goods_count > 0;
