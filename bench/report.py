"""The results of one run: tables for people (markdown) and for machines (JSON)."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .env import log

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def pyplot(what: str) -> Any | None:
    """matplotlib's pyplot drawing to files (the Agg backend: no display), or None, said in the
    log, where matplotlib is not installed (it comes with the dev extras)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log(f"{what}: matplotlib is not installed, no plot")
        return None
    return plt


def fmt(value: object, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class Goal:
    measurement: str
    metric: str
    measured: float
    unit: str
    goal: str
    met: bool

    def row(self) -> list[object]:
        return [
            self.measurement,
            self.metric,
            f"{fmt(self.measured)} {self.unit}".strip(),
            self.goal,
            "**met**" if self.met else "**NOT met**",
        ]


@dataclass
class Section:
    name: str
    title: str
    tables: list[tuple[str, list[str], list[list[object]]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def table(self, caption: str, headers: list[str], rows: list[list[object]]) -> None:
        self.tables.append((caption, headers, rows))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def markdown(self) -> str:
        parts = [f"## {self.title}"]
        for caption, headers, rows in self.tables:
            if caption:
                parts.append(f"**{caption}**")
            parts.append(markdown_table(headers, rows))
        parts += [f"- {n}" for n in self.notes]
        return "\n\n".join(parts)


@dataclass
class Report:
    scale: str
    command: str
    started: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    sections: list[Section] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)

    def section(self, name: str, title: str) -> Section:
        section = Section(name, title)
        self.sections.append(section)
        return section

    def goal(self, measurement: str, metric: str, measured: float, unit: str, goal: str, met: bool) -> Goal:
        g = Goal(measurement, metric, measured, unit, goal, met and not math.isnan(measured))
        self.goals.append(g)
        return g

    def all_true(self, measurement: str, metric: str, checks: list[bool]) -> Goal:
        """A goal that every one of `checks` holds (shown as how many of how many)."""
        return self.goal(measurement, metric, float(sum(checks)), f"of {len(checks)}", "all", all(checks))

    def describe_machine(self, **extra: Any) -> None:
        mem_kib = 0
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemTotal:"):
                    mem_kib = int(line.split()[1])
        except OSError:
            pass
        cpu = ""
        try:
            cpu = next(
                (
                    line.split(":", 1)[1].strip()
                    for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")
                ),
                "",
            )
        except OSError:
            pass
        self.environment.update(
            {
                "cores": os.cpu_count(),
                "memory_gib": round(mem_kib / 1024 / 1024, 1),
                "cpu": cpu,
                "kernel": platform.release(),
                "python": platform.python_version(),
                "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            }
        )
        self.environment.update(extra)

    def summary_markdown(self) -> str:
        return markdown_table(["measurement", "metric", "measured", "goal", "result"], [g.row() for g in self.goals])

    def markdown(self) -> str:
        env = self.environment
        head = [
            f"# Benchmark results ({self.scale})",
            f"Run {self.started:%Y-%m-%d %H:%M} UTC with `{self.command}` on {env.get('cores')} cores, "
            f"{env.get('memory_gib')} GiB ({env.get('cpu')}, kernel {env.get('kernel')}, Python {env.get('python')}); "
            f"load average at start {env.get('load_average_at_start')}.",
        ]
        extra = {
            k: v
            for k, v in env.items()
            if k not in {"cores", "memory_gib", "cpu", "kernel", "python", "load_average_at_start"}
        }
        if extra:
            head.append("; ".join(f"{k}: {v}" for k, v in extra.items()))
        body = ["## Summary", self.summary_markdown()] if self.goals else []
        body += [s.markdown() for s in self.sections]
        return "\n\n".join(head + body) + "\n"

    def as_json(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "command": self.command,
            "started": self.started.isoformat(),
            "environment": self.environment,
            "goals": [g.__dict__ for g in self.goals],
            "sections": {s.name: {"title": s.title, "data": s.data, "notes": s.notes} for s in self.sections},
        }

    def write(self, directory: Path = RESULTS_DIR) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        stem = f"{self.started:%Y%m%dT%H%M%S}-{self.scale}"
        md, js = directory / f"{stem}.md", directory / f"{stem}.json"
        md.write_text(self.markdown())
        js.write_text(json.dumps(self.as_json(), indent=2, default=_json_default, allow_nan=True))
        for path, latest in (
            (md, directory / f"latest-{self.scale}.md"),
            (js, directory / f"latest-{self.scale}.json"),
        ):
            latest.write_text(path.read_text())
        return md, js


def _json_default(value: object) -> object:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    return repr(value)
