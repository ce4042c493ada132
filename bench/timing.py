"""Timing of sequential requests: one keep-alive HTTP client, and batches of calls bounded in count and time."""

from __future__ import annotations

import http.client
import time
from collections.abc import Awaitable, Callable


class HttpClient:
    """One keep-alive HTTP/1.1 connection on loopback (stdlib: a few µs of overhead)."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def get(self, path: str) -> tuple[float, int, bytes]:
        try:
            return self._get(path)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            # The server closes a connection idle past its keep-alive timeout
            # (uvicorn: 5 s), as after a long EXPLAIN between two series: once more.
            self.conn.close()
            return self._get(path)

    def _get(self, path: str) -> tuple[float, int, bytes]:
        t0 = time.perf_counter()
        self.conn.request("GET", path)
        response = self.conn.getresponse()
        body = response.read()
        return (time.perf_counter() - t0) * 1000.0, response.status, body

    def close(self) -> None:
        self.conn.close()


async def timed_batch(
    call: Callable[[], Awaitable[object]], count: int, budget_s: float, minimum: int = 5
) -> list[float]:
    """Up to `count` sequential calls, stopping after `budget_s` once `minimum` samples are in: latencies in ms."""
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < count:
        t0 = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - t0) * 1000.0)
        if len(samples) >= minimum and time.perf_counter() - started > budget_s:
            break
    return samples
