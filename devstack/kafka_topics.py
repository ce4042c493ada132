"""The topics of a local Kafka: which there are, creating those missing, and who leads each partition.

Contract: `TOPICS` is the event topics of the event catalogue and their
dead-letter topics. `ensure_topics()` creates those of the topics asked for
that do not exist (event topics keep everything: retention.ms=-1) and returns
once every node names a leader for each of their partitions; it retries while
Kafka does not answer and raises StackError at `deadline`. `describe()`
gives each partition's leader, replicas and in-sync replicas. Both talk to
the cluster at `bootstrap` through aiokafka's admin client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from devstack.errors import StackError
from devstack.progress import say
from shared import events

# The event topics (from the event catalogue) and their dead-letter topics.
TOPICS: tuple[str, ...] = (*events.TOPICS, *(events.dlq_topic(t) for t in events.TOPICS))


async def ensure_topics(
    bootstrap: str,
    topics: Sequence[str],
    partitions: int,
    replication_factor: int,
    min_insync_replicas: int,
    deadline: float,
) -> None:
    """Create those of `topics` that do not exist, with `partitions` each."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaError, TopicAlreadyExistsError

    configs = {
        # Event topics keep everything: the read model can be rebuilt from them.
        "retention.ms": "-1",
        "min.insync.replicas": str(min_insync_replicas),
    }
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [t for t in topics if t not in existing]
            if missing:
                response = await admin.create_topics(
                    [NewTopic(t, partitions, replication_factor, topic_configs=configs) for t in missing]
                )
                for topic, code, *_ in getattr(response, "topic_errors", []):
                    if code not in (0, TopicAlreadyExistsError.errno):
                        raise KafkaError(f"create topic {topic}: error {code}")
                say(
                    f"created topics {', '.join(missing)} with {partitions} partitions, "
                    f"replication factor {replication_factor}"
                )
                await _wait_led(bootstrap, missing, partitions, deadline)
            return
        except TopicAlreadyExistsError:
            return
        except (KafkaError, OSError) as exc:
            if time.monotonic() > deadline:
                raise StackError(f"Kafka is not answering on {bootstrap}: {exc}") from exc
            await asyncio.sleep(0.5)
        finally:
            await admin.close()


async def _wait_led(bootstrap: str, topics: Sequence[str], partitions: int, deadline: float) -> None:
    """Until every node's metadata names a leader for each partition of the new topics: a creation
    is acknowledged by the controller before the other nodes know of it."""
    from aiokafka.errors import KafkaError

    want = {(t, p) for t in topics for p in range(partitions)}
    while True:
        try:
            led = {tp for tp, p in (await describe(bootstrap, topics)).items() if p["leader"] >= 0}
            if want <= led:
                return
        except KafkaError:
            pass
        if time.monotonic() > deadline:
            raise StackError(f"the new topics {', '.join(topics)} have no leader for every partition in time")
        await asyncio.sleep(0.2)


async def describe(bootstrap: str, topics: Sequence[str]) -> dict[tuple[str, int], dict[str, Any]]:
    """(topic, partition) → {"leader": node id, "replicas": [...], "isr": [...]}, as the cluster sees it."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    try:
        await admin.start()
        out: dict[tuple[str, int], dict[str, Any]] = {}
        for topic in await admin.describe_topics(list(topics)):
            for p in topic["partitions"]:
                out[(topic["topic"], p["partition"])] = {
                    "leader": p["leader"],
                    "replicas": list(p["replicas"]),
                    "isr": list(p["isr"]),
                }
        return out
    finally:
        await admin.close()
