"""Applying one part through failures: the lane's retry loop.

What to do after an error is `decide()`'s verdict (projection/apply.py): a
part whose data was refused, or that failed in a way nobody foresaw, is
applied again record by record (`Applier.isolating`), so that the record that
causes it is dead-lettered and the others applied; the database's or Kafka's
state (down, no login, no permission...) is waited out, never skipped; dead
letters Kafka keeps refusing are parked instead; and after a long outage the
part is given up, for the runner to re-read from the stored positions. A
rebuild that replaced the read model gives the part up too: the positions to
resume from are the new model's.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka.errors import KafkaError

from order_history.consumer.clients import Clients
from order_history.projection.apply import BatchStats, Decision, Part, decide, offset_ranges
from order_history.projection.positions import PositionsRetired
from shared.backoff import Backoff
from shared.database import WAIT_OUT_ERRORS

# The runner's logger, whichever module logs: operators' queries and alerts select on its name.
log = logging.getLogger("order_history.consumer.runner")


async def apply_with_retry(
    clients: Clients, part: Part, max_backoff: float, stop: asyncio.Event
) -> tuple[BatchStats, float] | None:
    """Apply a part, retrying through short outages: what it did and the seconds its last try took;
    None if it was given up (or the consumer is stopping)."""
    assert clients.applier is not None
    backoff = Backoff(0.1, max_backoff, stop=stop)
    attempt = 0
    park = False  # Kafka took none of the part's dead letters on the last tries: park them
    while not stop.is_set():
        attempt += 1
        started = time.monotonic()
        try:
            try:
                stats = await clients.applier.apply(part, park)
            except Exception as exc:
                if decide(exc, attempt) is not Decision.ISOLATE:
                    raise
                stats = await clients.applier.isolating(part.records, part.decoded, exc, park)
        except PositionsRetired:
            # A rebuild switched the read model: the stored positions to resume from are the new one's.
            log.warning("read model replaced by a rebuild, re-reading positions", extra=offset_ranges(part.records))
            return None
        except (*WAIT_OUT_ERRORS, KafkaError) as exc:
            # The database's or Kafka's state (down, no login, no permission...): wait, never skip.
            decision = decide(exc, attempt)
            log.warning(
                {
                    Decision.RETRY: "batch not applied, will retry",
                    Decision.PARK: "dead letters not delivered, parking them",
                    Decision.GIVE_UP: "batch given up, will re-read",
                }.get(decision, "batch not applied"),
                extra={"error": f"{type(exc).__name__}: {exc}", "attempt": attempt, **offset_ranges(part.records)},
            )
            if decision is Decision.PARK:
                park = True
                continue
            if decision is Decision.GIVE_UP:
                return None  # a long outage: the caller resumes from the stored positions
            await backoff.wait()
            continue
        return stats, time.monotonic() - started
    return None
