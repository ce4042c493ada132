-- The divergence sampler's state (order_history/sampler.py), kept in the read
-- database so that `order-history status` can show it and a restarted consumer
-- resumes where the last one stopped instead of starting its pass over.
--
-- divergence_sampler: one row. The pass in progress (its start, how many id
-- ranges each check has in it, the next range to compare), the last complete
-- pass, and how many intervals the sampler has worked. A rebuild creates this
-- table empty in the new schema: the new read model has never been compared.
CREATE TABLE divergence_sampler (
    singleton             boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    started_at            timestamptz NOT NULL DEFAULT now(),
    range_size            integer     NOT NULL,
    pass_started_at       timestamptz,
    pass_ranges           jsonb,
    cursor_check          text,
    cursor_range          bigint,
    last_pass_started_at  timestamptz,
    last_pass_finished_at timestamptz,
    passes                bigint      NOT NULL DEFAULT 0,
    steps                 bigint      NOT NULL DEFAULT 0,
    stepped_at            timestamptz
);

-- Every difference the sampler saw at its latest check of the row's id range:
-- first seen then, confirmed (counted as divergent) once it has lasted the
-- settle time and the command side has not written the row meanwhile. A
-- difference gone at a later check of its range is deleted.
CREATE TABLE divergent_rows (
    check_name    text        NOT NULL,
    entity        text        NOT NULL,
    id            bigint      NOT NULL,
    field         text        NOT NULL,
    command       text        NOT NULL,
    read          text        NOT NULL,
    first_seen_at timestamptz NOT NULL,
    checked_at    timestamptz NOT NULL,
    confirmed_at  timestamptz,
    PRIMARY KEY (check_name, entity, id, field)
);

-- Placeholder orders: the orders goods name before the order's own event
-- arrived (known = false). Counting orphan goods reads these rows only, so the
-- count costs what the orphans cost, not what the table does. Keyed on id
-- alone: `known` is already named by the list's partial indexes and id never
-- changes, so no update that was HOT stops being HOT, and only placeholder rows
-- get an entry.
CREATE INDEX orders_placeholders ON orders (id) WHERE NOT known;
