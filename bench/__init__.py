"""Benchmarks of the order-history system: `python -m bench [--quick] [--only NAME]`.

Four measurements, each beside its own baseline in the same run, on the same
PostgreSQL and Kafka (a stack of its own, started and stopped by the bench):

1. query       GET /v1/order-history at scale vs the original GROUP BY/HAVING query
2. projection  consumer throughput vs a raw read-and-parse and a one-event-per-transaction consumer
3. write       POST /v1/order and /v1/goods under wrk vs a bare INSERT loop (pgbench)
4. freshness   time from a write's 2xx to its visibility in GET /v1/order-history/{id}

This is a benchmark, not a test: it reports figures and whether goals are met,
it asserts nothing.
"""
