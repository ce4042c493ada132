"""One backoff policy for every wait on a database or a broker that does not answer.

`Backoff.wait()` sleeps for the current delay and doubles it, up to `cap`;
`reset()` after a success starts again from `first`. A `stop` event cuts a
wait short, so a process asked to stop never sits out a long delay.
"""

from __future__ import annotations

import asyncio
import contextlib


class Backoff:
    def __init__(self, first: float = 0.1, cap: float = 5.0, stop: asyncio.Event | None = None) -> None:
        if not 0 < first <= cap:
            raise ValueError("backoff needs 0 < first <= cap")
        self.first = first
        self.cap = cap
        self.delay = first
        self.attempts = 0
        self._stop = stop

    def reset(self) -> None:
        self.delay = self.first
        self.attempts = 0

    def next_delay(self) -> float:
        """The delay to wait now; the one after it is twice as long (at most `cap`)."""
        delay = self.delay
        self.delay = min(self.delay * 2, self.cap)
        self.attempts += 1
        return delay

    async def wait(self) -> None:
        delay = self.next_delay()
        if self._stop is None:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=delay)
