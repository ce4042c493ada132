"""Progress of a console command's long work: a tqdm bar on a terminal, nothing otherwise.

The bar goes to stderr and only when stderr is a terminal, so that scripts
and CI logs read just the command's output and its one-line summary.
"""

from __future__ import annotations

import sys
from typing import Never

from tqdm import tqdm


def bar(description: str, total: int | None = None, unit: str = "row") -> tqdm[Never]:
    """A progress bar to `update(n)` and `close()`; silent unless stderr is a terminal."""
    return tqdm(
        total=total,
        desc=description,
        unit=unit,
        unit_scale=True,
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
        dynamic_ncols=True,
    )
