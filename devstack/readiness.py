"""What `make up` waits for besides the APIs' /readyz: consumers that hold their partitions at their positions.

A consumer is ready once it has joined its group, been assigned partitions, and
sought each to the position its read database stores. Its /metrics says so
without a race: `consumer_lag_events` has a sample for a partition only from the
moment the consumer has positioned it (and knows the log's end), and
`consumer_halted` is 1 when the stored positions do not fit the log. A consumer
without a metrics port (`ORDER_HISTORY_METRICS_PORT=0`) is read from its log
instead: the "partitions assigned" line of its latest assignment, followed by
"seeked to stored positions".
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

# A partition as the consumers name it: (Kafka topic, partition number).
Partition = tuple[str, int]


@dataclass(frozen=True)
class ConsumerView:
    """What one consumer process says of itself."""

    positioned: frozenset[Partition]
    halted: bool


def from_metrics(port: int) -> ConsumerView | None:
    """The consumer serving /metrics on `port`; None while it does not answer (starting, or not ours)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError, ValueError):
        return None
    positioned: set[Partition] = set()
    halted = False
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "consumer_lag_events":
                    positioned.add((sample.labels["topic"], int(sample.labels["partition"])))
                elif sample.name == "consumer_halted":
                    halted = sample.value > 0
    except (ValueError, KeyError):
        return None  # another program's page on that port: not a consumer's
    return ConsumerView(frozenset(positioned), halted)


def from_log(text: str) -> ConsumerView | None:
    """The consumer whose JSON log since its start is `text`; None while it holds no assignment yet."""
    assigned: list[Partition] | None = None
    positioned = False
    halted = False
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        msg = record.get("msg") if isinstance(record, dict) else None
        if msg == "partitions assigned":
            try:
                assigned = [_partition(name) for name in record.get("partitions", [])]
            except ValueError:
                continue
            positioned = not assigned  # nothing to seek: the listener logs no seek
        elif msg == "partitions revoked":
            assigned, positioned = None, False
        elif msg == "seeked to stored positions" and assigned is not None:
            positioned = True
        elif isinstance(msg, str) and msg.startswith("consumer stopped: stored position does not fit the log"):
            halted = True  # the consumer stays halted until it is restarted
    if halted:
        return ConsumerView(frozenset(), True)
    if assigned is None or not positioned:
        return None
    return ConsumerView(frozenset(assigned), False)


def _partition(name: str) -> Partition:
    """ "goods.events[2]" (as the consumer logs it) → ("goods.events", 2)."""
    topic, _, number = name.rpartition("[")
    return topic, int(number.rstrip("]"))


def partition_names(partitions: set[Partition] | frozenset[Partition]) -> str:
    return ", ".join(f"{topic}[{number}]" for topic, number in sorted(partitions))
