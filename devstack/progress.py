"""Progress lines for slow steps (downloads, formatting, waiting)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


def say(message: str, prefix: str = "devstack") -> None:
    print(f"[{prefix}] {message}", file=sys.stderr, flush=True)


@contextmanager
def step(message: str, prefix: str = "devstack") -> Iterator[None]:
    started = time.monotonic()
    say(f"{message} ...", prefix)
    yield
    say(f"{message}: done in {time.monotonic() - started:.1f}s", prefix)
