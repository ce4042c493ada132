"""Which lane applies each partition's next messages (pure logic, no I/O).

The consumer applies with several lanes at once, each on its own connection,
one transaction at a time. A partition stays on one lane while any of its
messages wait there, so each partition's messages are applied in offset order.
"""

from __future__ import annotations

from collections.abc import Collection

from aiokafka import TopicPartition


class Lanes:
    """Which lane applies each partition's next messages.

    Each lane applies its parts one after another, in its own transactions; the
    lanes run at once. A partition stays on its lane while any of its messages
    are queued or being applied there, so every partition's messages are applied
    in offset order. A partition with none waiting goes to the open lane (one
    with room for a part) with the fewest messages waiting: the lanes stay about
    equally loaded, and each lane starts its next part as soon as it is done with
    the last, whatever the other lanes are doing. (One transaction per batch,
    split by partition, would make every part wait for the batch's slowest.)
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.lane_of: dict[TopicPartition, int] = {}  # partitions with messages waiting
        self._pending: dict[TopicPartition, int] = {}  # messages queued or being applied, per partition

    @property
    def waiting(self) -> list[int]:
        """Messages queued or being applied, per lane."""
        per_lane = [0] * self.count
        for tp, pending in self._pending.items():
            per_lane[self.lane_of[tp]] += pending
        return per_lane

    def route(
        self, sizes: dict[TopicPartition, int], open_lanes: Collection[int] | None = None
    ) -> dict[int, list[TopicPartition]]:
        """Give each partition of a fetched batch (with its message count) a lane: lane -> its partitions.

        A partition with messages waiting keeps its lane; the others go to one of
        `open_lanes` (default: every lane).
        """
        candidates = range(self.count) if open_lanes is None else open_lanes
        routed: dict[int, list[TopicPartition]] = {}
        for tp in sorted(sizes, key=lambda t: (-sizes[t], t)):
            lane = self.lane_of.get(tp)
            if lane is None:
                waiting = self.waiting
                lane = self.lane_of[tp] = min(candidates, key=lambda i: (waiting[i], i))
            routed.setdefault(lane, []).append(tp)
            self._pending[tp] = self._pending.get(tp, 0) + sizes[tp]
        return routed

    def bound_to(self, lanes: Collection[int]) -> set[TopicPartition]:
        """The partitions with messages waiting on one of `lanes`."""
        return {tp for tp, lane in self.lane_of.items() if lane in lanes}

    def done(self, sizes: dict[TopicPartition, int]) -> None:
        """A lane is done with these messages (applied, skipped or given up): a partition
        with nothing left waiting may go to another lane next time."""
        for tp, size in sizes.items():
            self._pending[tp] -= size
            if not self._pending[tp]:
                del self._pending[tp]
                del self.lane_of[tp]
