"""The harness really starts a broker and a database that work."""

from __future__ import annotations

from tests.harness import ORDER, Env


async def test_kafka_round_trip(env: Env) -> None:
    producer = await env.producer()
    topic = env.topic(ORDER)
    for i in range(30):
        await producer.send(topic, value=f"v{i}".encode(), key=str(i % 7).encode())
    await producer.flush()
    received = await env.read_topic(ORDER, expect=30)
    assert sorted(m.value for m in received) == sorted(f"v{i}".encode() for i in range(30))
    # Same key, same partition.
    by_key: dict[bytes, set[int]] = {}
    for m in received:
        by_key.setdefault(m.key, set()).add(m.partition)
    assert all(len(p) == 1 for p in by_key.values())
    assert len({m.partition for m in received}) > 1  # several partitions are really in use


async def test_postgres_round_trip(env: Env) -> None:
    pool = await env.pool("order")
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT current_user") == "order_svc"
        await conn.execute("CREATE TEMP TABLE smoke (v text)")
        await conn.execute("INSERT INTO smoke VALUES ('hello')")
        assert await conn.fetchval("SELECT v FROM smoke") == "hello"
        applied = await conn.fetchval("SELECT count(*) FROM schema_migrations")
    assert applied >= 1
