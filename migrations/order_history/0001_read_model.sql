-- The joined, denormalised read model of order-history.
--
-- orders: every order the consumer has heard of, plus placeholders (known =
-- false) for orders that goods name before the order's own event arrived.
-- Deleted orders stay as tombstones (deleted = true) so that they remember their
-- version and a late, older event cannot resurrect them.
CREATE TABLE orders (
    id          bigint      PRIMARY KEY,
    user_id     bigint,
    created_at  timestamptz,
    updated_at  timestamptz,
    version     integer     NOT NULL DEFAULT 0,
    known       boolean     NOT NULL DEFAULT false,
    deleted     boolean     NOT NULL DEFAULT false,
    goods_count integer     NOT NULL DEFAULT 0
);

-- Serves `goods_count > N ORDER BY id`: one ordered range per distinct count,
-- merged by id (see order_history/queries.py). Listed orders only.
CREATE INDEX orders_listed_by_count ON orders (goods_count, id) INCLUDE (user_id, created_at)
    WHERE known AND NOT deleted AND goods_count > 0;

-- goods: current state of every goods item, tombstones included.
CREATE TABLE goods (
    id         bigint      PRIMARY KEY,
    order_id   bigint      NOT NULL,
    name       text,
    created_at timestamptz,
    updated_at timestamptz,
    version    integer     NOT NULL,
    deleted    boolean     NOT NULL DEFAULT false
);
CREATE INDEX goods_live_by_order ON goods (order_id, id) WHERE NOT deleted;

-- Tracking records: the next offset to apply per topic-partition, written in the
-- same transaction as the changes those events made.
CREATE TABLE consumer_positions (
    consumer_group text    NOT NULL,
    topic          text    NOT NULL,
    partition      integer NOT NULL,
    next_offset    bigint  NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);

-- Messages sent to a dead-letter topic, counted per topic and reason.
CREATE TABLE dead_letters (
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    "offset"    bigint      NOT NULL,
    reason      text        NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition, "offset")
);
