"""Where this checkout's local stacks keep what they share, and how their paths are shown to people.

Contract: `REPO` is the checkout (where `make` runs); `kafka_libs_dir()` is where
the Kafka broker's jars are fetched once, for every stack of the checkout;
`short()` writes paths as people type them in the checkout. Nothing here reads
or starts anything.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def kafka_libs_dir() -> Path:
    # Shared by every stack of this checkout (make up, tests, benchmarks).
    return REPO / ".devstack" / "kafka-libs"


def short(*paths: str | Path) -> str:
    """Paths under the checkout relative to it, as people type them there (`make` runs there); others whole."""
    return ", ".join(
        str(Path(p).relative_to(REPO)) if Path(p).is_relative_to(REPO) else str(p) for p in paths if str(p)
    )
