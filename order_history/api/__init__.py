"""The query API: `GET /v1/order-history` and `GET /v1/order-history/{order_id}`, in plain SQL.

It only reads: the read model, the positions (for `Consistency-Token` and the
freshness headers), never Kafka.
"""
