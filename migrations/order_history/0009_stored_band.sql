-- The list's indexes keyed on a stored goods-count band, none on goods_count, so
-- that a change of an order's goods count within its band is a HOT update.
--
-- Nearly every goods event changes some order's goods_count. PostgreSQL updates
-- a row without touching its indexes (HOT) only when no column any index names
-- (as a key, an INCLUDE column or in its WHERE) changes and the row's page has
-- room. Up to migration 0008 every list index named goods_count, so every count
-- change wrote a new entry into each of the table's seven or so indexes, and the
-- two of migration 0008 made that the consumer's largest cost (docs/benchmarks.md,
-- "The consumer's cost of the list's filters").
--
-- Now the indexes name `band` (goods_count_band(goods_count), stored), and the
-- table leaves room in each page for the new version of its rows. The id sort
-- merges the bands of orders_listed_by_band, as the created_at sorts do theirs:
-- at most 12 ranges, where the buckets of migration 0002 and the tails of 0003
-- and 0006 made at most 11. A page reads index entries only, then its rows by
-- id; a band that also holds counts at or below the threshold is filtered by
-- goods_count, read from the table (order_history/queries.py).
--
-- Adding a stored column rewrites the table, under an exclusive lock: on a large
-- read model, run this migration while the API can be down for that long (or
-- rebuild into a new database and switch).
DROP INDEX orders_listed_by_bucket;
DROP INDEX orders_listed_over_10;
DROP INDEX orders_listed_over_20;
DROP INDEX orders_listed_over_30;
DROP INDEX orders_listed_over_40;
DROP INDEX orders_listed_by_created;
DROP INDEX orders_listed_by_user_created;
DROP FUNCTION goods_count_bucket(integer);

-- Set before the rewrite, which fills the pages to it.
ALTER TABLE orders SET (fillfactor = 85);
ALTER TABLE orders ADD COLUMN band integer NOT NULL GENERATED ALWAYS AS (goods_count_band(goods_count)) STORED;

-- Keys only, no INCLUDE: each column named here is one more whose change
-- defeats HOT. Each index holds its page's sort keys (id, or created_at and
-- id): all that a page needs of the entries it skips.
CREATE INDEX orders_listed_by_band ON orders (band, id)
    WHERE known AND NOT deleted AND band > 0;
CREATE INDEX orders_listed_by_created ON orders (band, created_at, id)
    WHERE known AND NOT deleted AND band > 0;
CREATE INDEX orders_listed_by_user_created ON orders (user_id, band, created_at, id)
    WHERE known AND NOT deleted AND band > 0;
