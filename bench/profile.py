"""py-spy sampling of a service process during a measurement, summarised as text."""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .env import log


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


@dataclass
class Profiler:
    """`py-spy record --format raw` of one PID and its children for `seconds`, started in the background."""

    pid: int
    seconds: float
    output: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> bool:
        exe = py_spy()
        if exe is None:
            log("py-spy is not installed: no profile")
            return False
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(self.pid),
                "--subprocesses",  # an API's uvicorn workers
                "--duration",
                str(max(1, int(self.seconds))),
                "--rate",
                "200",
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(self.output),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        return True

    def finish(self, top: int = 15) -> list[tuple[str, float, float]]:
        """(frame, self %, inclusive %) of the hottest frames."""
        if self.proc is None:
            return []
        try:
            _, err = self.proc.communicate(timeout=self.seconds + 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        if self.proc.returncode != 0 or not self.output.exists():
            log(f"py-spy failed ({self.proc.returncode}): {err.decode(errors='replace')[-500:]}")
            return []
        return summarise(self.output, top)


def summarise(collapsed: Path, top: int = 15) -> list[tuple[str, float, float]]:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        try:
            count = int(count_text)
        except ValueError:
            continue
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        own[_short(frames[-1])] += count
        for frame in {_short(f) for f in frames}:
            inclusive[frame] += count
    if total == 0:
        return []
    return [(frame, 100.0 * n / total, 100.0 * inclusive[frame] / total) for frame, n in own.most_common(top)]


def _short(frame: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if parts else path
    return f"{name} ({short})"
