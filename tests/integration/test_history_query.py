"""The list query against a plain scan, over goods counts in every bucket (order_history/api/queries.py).

The read model is filled directly: this is about the merge of index ranges
(exact buckets, the ranges of counts above 10, 20, 30 and 40, the wide buckets), not the consumer.
"""

from __future__ import annotations

import random

import pytest

from tests.harness import Env

# Counts in every exact bucket, on both sides of each tail (10, 20, 30, 40), in every wide bucket, and at the ends.
COUNTS = [0, *range(1, 131), 150, 192, 193, 256, 257, 600, 1024, 1025, 4096, 4097, 65536, 65537, 2**31 - 1]
THRESHOLDS = [0, 1, 5, 9, 10, 11, 19, 20, 21, 29, 30, 31, 39, 40, 41, 47, 48, 49, 100, 1024, 5000, 65536, 2**31 - 2]
PAGES = [(50, 0), (7, 3), (1000, 0), (25, 100)]

PLAIN = """SELECT id FROM orders WHERE known AND NOT deleted AND goods_count > $1
           ORDER BY id LIMIT $2 OFFSET $3"""


@pytest.fixture
async def filled(env: Env) -> Env:
    rng = random.Random(7)
    rows = []
    for i in range(3000):
        count = COUNTS[i % len(COUNTS)] if i < 2 * len(COUNTS) else rng.choice(COUNTS)
        known, deleted = (True, False) if i % 17 else rng.choice([(False, False), (True, True)])
        rows.append((rng.randrange(1, 10**9), count, known, deleted))
    pool = await env.pool("order_history")
    await pool.executemany(
        """INSERT INTO orders (id, user_id, created_at, updated_at, version, known, deleted, goods_count)
           VALUES ($1, 1, now(), now(), 1, $3, $4, $2) ON CONFLICT (id) DO NOTHING""",
        rows,
    )
    await pool.execute("ANALYZE orders")
    return env


async def test_every_threshold_and_page_equals_a_plain_scan(filled: Env) -> None:
    pool = await filled.pool("order_history")
    async with filled.client("order_history") as client:
        for threshold in THRESHOLDS:
            for limit, offset in PAGES:
                expected = [r["id"] for r in await pool.fetch(PLAIN, threshold, limit, offset)]
                response = await client.get(
                    "/v1/order-history", params={"threshold": threshold, "limit": limit, "offset": offset}
                )
                assert response.status_code == 200, (threshold, limit, offset, response.text)
                got = [item["id"] for item in response.json()["data"]]
                assert got == expected, (threshold, limit, offset)
                if threshold < 100 and offset == 0 and limit >= 50:
                    assert got, "the data should list something at this threshold"
