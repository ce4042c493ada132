"""What the consumer knows of each assigned partition's progress (bookkeeping only, no I/O).

Per assigned partition: the next offset to apply and the next not yet taken
from aiokafka, the log end as last asked, when the position last moved, and
freshness (docs/freshness.md): the log ends asked for and when, kept until the
applied position reaches them, the newest occurred_at applied, and when it was
last recorded caught up. From these: lag, how long a partition with lag has
stood still (stuck), and staleness. A revoked partition is forgotten whole: it
is its next owner's to track.

Everything here is read by the metrics at each scrape (metrics.py) and written
by the consumer's tasks, all on one event loop: no locks.
"""

from __future__ import annotations

import collections
import datetime as dt
import time
from collections.abc import Callable
from typing import Final

from aiokafka import TopicPartition

from order_history.projection.apply import BatchStats, Records

# Log ends seen and not yet reached, kept per partition: a partition that lags for
# longer than this many looks falls back on its newest occurred_at for freshness.
_ENDS_KEPT: Final = 64


class Progress:
    def __init__(self) -> None:
        # For the metrics: the next offset to apply per assigned partition, the newest event applied.
        self.applied_to: dict[TopicPartition, int] = {}
        self.log_ends: dict[TopicPartition, int] = {}
        # When each assigned partition's position last moved (or it was assigned): a stuck one has lag and an old one.
        self.advanced_at: dict[TopicPartition, float] = {}
        # Per assigned partition, the next offset not yet taken from aiokafka (see fetching.py).
        self.fetched_to: dict[TopicPartition, int] = {}
        self.newest_applied: dt.datetime | None = None
        # Freshness (the module docstring): per assigned partition, the log ends asked for and
        # when they were asked, oldest first, until the applied position reaches them; the newest
        # occurred_at applied by this process; and when it was last recorded caught up.
        self._ends_seen: dict[TopicPartition, collections.deque[tuple[int, dt.datetime]]] = {}
        self.newest_in: dict[TopicPartition, dt.datetime] = {}
        self.caught_up_at: dict[TopicPartition, dt.datetime] = {}

    def sought(self, tp: TopicPartition, offset: int) -> None:
        """`tp` is assigned, and resumes at `offset`."""
        self.applied_to[tp] = offset
        self.fetched_to[tp] = self.applied_to[tp]
        self.advanced_at.setdefault(tp, time.monotonic())

    def applied(self, stats: BatchStats, records: Records) -> None:
        """A part is applied: its partitions' positions moved."""
        now = time.monotonic()
        for tp, messages in records.items():
            self.applied_to[tp] = max(self.applied_to.get(tp, 0), messages[-1].offset + 1)
            self.advanced_at[tp] = now
        newest = stats.what.newest
        if newest is not None and (self.newest_applied is None or newest > self.newest_applied):
            self.newest_applied = newest
        for tp, at in stats.what.newest_in.items():
            if tp not in self.newest_in or at > self.newest_in[tp]:
                self.newest_in[tp] = at

    def revoked(self, tp: TopicPartition) -> None:
        self.applied_to.pop(tp, None)
        self.log_ends.pop(tp, None)
        self.advanced_at.pop(tp, None)
        self.fetched_to.pop(tp, None)
        self.forget_freshness(tp)

    def forget_freshness(self, tp: TopicPartition) -> None:
        """A revoked partition: its freshness is its next owner's to record."""
        self._ends_seen.pop(tp, None)
        self.newest_in.pop(tp, None)
        self.caught_up_at.pop(tp, None)

    def lag(self, highwater: Callable[[TopicPartition], int | None]) -> dict[TopicPartition, int]:
        """Per assigned partition: messages in the log (as the last fetch saw its end: `highwater`,
        or as last asked) not yet applied."""
        out = {}
        for tp, next_offset in list(self.applied_to.items()):
            ends = [e for e in (highwater(tp), self.log_ends.get(tp)) if e is not None]
            if ends:
                out[tp] = max(0, max(ends) - next_offset)
        return out

    def stuck(self, highwater: Callable[[TopicPartition], int | None]) -> dict[TopicPartition, float]:
        """Per assigned partition: seconds since its position last moved, while it has lag (else 0)."""
        now = time.monotonic()
        return {tp: (now - self.advanced_at.get(tp, now)) if n > 0 else 0.0 for tp, n in self.lag(highwater).items()}

    def staleness(self) -> float | None:
        """Seconds since the instant before which every event of the assigned partitions is applied,
        as this process knows it (docs/freshness.md); None without partitions or while one is unknown."""
        instants = []
        for tp in list(self.applied_to):
            known = [t for t in (self.newest_in.get(tp), self.caught_up_at.get(tp)) if t is not None]
            if not known:
                return None
            instants.append(max(known))
        if not instants:
            return None
        return max(0.0, (dt.datetime.now(dt.UTC) - min(instants)).total_seconds())

    def saw_ends(self, ends: dict[TopicPartition, int], at: dt.datetime) -> None:
        """The log ends, as asked at `at` (before asking: they cover every event appended before it)."""
        self.log_ends.update(ends)
        for tp, end in ends.items():
            if tp in self.applied_to:  # assigned and sought (a revoked one's ends are no longer ours)
                self._ends_seen.setdefault(tp, collections.deque(maxlen=_ENDS_KEPT)).append((end, at))

    def reached(self) -> dict[TopicPartition, tuple[int, dt.datetime]]:
        """Per partition, the newest of the ends seen that its applied position has reached since
        the last call (and when it was asked for); those ends are no longer kept."""
        reached: dict[TopicPartition, tuple[int, dt.datetime]] = {}
        for tp, seen in self._ends_seen.items():
            applied = self.applied_to.get(tp)
            while applied is not None and seen and seen[0][0] <= applied:
                reached[tp] = seen.popleft()
        return reached

    def caught_up(self, reached: dict[TopicPartition, tuple[int, dt.datetime]]) -> None:
        """These partitions are recorded caught up as of when each reached end was asked for."""
        for tp, (_, at) in reached.items():
            self.caught_up_at[tp] = max(at, self.caught_up_at.get(tp, at))
