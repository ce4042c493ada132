"""`python -m bench [--quick] [--only query,projection,write,freshness,rebuild,reconcile,soak,scaleout,memory]`."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import shlex
import signal
import sys
import time
from pathlib import Path

from .config import FULL, QUICK, Scale
from .env import BenchStack, log, pg_settings_of
from .report import RESULTS_DIR, Report

MEASUREMENTS = ("query", "projection", "write", "freshness", "rebuild", "reconcile", "soak", "scaleout", "memory")
# Only when asked for (--only ...): the soak and the memory run take 15 and 40 minutes of their own,
# and the scale-out is about several machines, measured on one.
DEFAULT = MEASUREMENTS[:-3]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small scale: a few minutes in all")
    parser.add_argument(
        "--only",
        default=",".join(DEFAULT),
        help=f"comma-separated subset of {', '.join(MEASUREMENTS)} "
        "(default: all but soak, scaleout and memory, in that order)",
    )
    parser.add_argument(
        "--fast-pg", action="store_true", help="PostgreSQL with fsync off (default: durable, as `make up`)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the bench stack's data directory afterwards")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder for the markdown and JSON results")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the service processes during projection and write"
    )
    parser.add_argument(
        "--pg-stats",
        action="store_true",
        help="load pg_stat_statements and report the costliest statements of the consumer and the order API",
    )
    parser.add_argument(
        "--pg-set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a PostgreSQL setting for the bench's server, e.g. --pg-set max_wal_size=4GB",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a scale field, e.g. --set orders=200000",
    )
    args = parser.parse_args(argv)
    only = [m.strip() for m in args.only.split(",") if m.strip()]
    unknown = [m for m in only if m not in MEASUREMENTS]
    if unknown:
        parser.error(f"unknown measurement(s) {', '.join(unknown)}; choose from {', '.join(MEASUREMENTS)}")
    args.only = only
    return args


def scale_of(args: argparse.Namespace) -> Scale:
    scale = QUICK if args.quick else FULL
    overrides: dict[str, object] = {}
    fields = {f.name: f for f in dataclasses.fields(Scale)}
    for item in args.set:
        name, _, raw = item.partition("=")
        if name not in fields:
            raise SystemExit(f"--set: unknown field {name!r}; fields: {', '.join(fields)}")
        current = getattr(scale, name)
        overrides[name] = type(current)(raw)
    return dataclasses.replace(scale, **overrides) if overrides else scale  # type: ignore[arg-type]


async def run(args: argparse.Namespace, scale: Scale, bs: BenchStack, report: Report) -> None:
    from . import freshness, memory, projection, query, rebuild, reconcile, scaleout, soak, writes

    context: dict[str, float] = {}
    for name in args.only:
        started = time.monotonic()
        log(f"=== measurement: {name} ===")
        if name == "query":
            await query.run(bs, scale, report, args.results)
        elif name == "projection":
            await projection.run(bs, scale, report, profile=args.profile, results_dir=args.results)
        elif name == "write":
            await writes.run(bs, scale, report, context, profile=args.profile, results_dir=args.results)
        elif name == "freshness":
            await freshness.run(bs, scale, report, context)
        elif name == "rebuild":
            await rebuild.run(bs, scale, report)
        elif name == "reconcile":
            await reconcile.run(bs, scale, report)
        elif name == "soak":
            await soak.run(bs, scale, report, args.results)
        elif name == "scaleout":
            await scaleout.run(bs, scale, report)
        else:
            await memory.run(bs, scale, report, args.results)
        bs.stop_processes()
        report.environment.setdefault("phase_seconds", {})[name] = round(time.monotonic() - started, 1)


def _interrupt(signum: int, _frame: object) -> None:
    # Ctrl-C or SIGTERM: unwind to main()'s finally, which stops the bench stack.
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A handler of our own (asyncio.run then keeps it): also when started in the
    # background, where SIGINT is ignored by default.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    scale = scale_of(args)
    command = "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv)
    report = Report(scale=scale.name, command=command.strip())
    pg_settings = pg_settings_of(args.pg_set)
    bs = BenchStack.create(fast_pg=args.fast_pg, keep=args.keep, pg_stats=args.pg_stats, pg_settings=pg_settings)
    report.describe_machine(
        postgres=(
            "durable (fsync on, synchronous_commit on)"
            if not args.fast_pg
            else "fast_pg (fsync off, synchronous_commit off)"
        )
        + "".join(f"; {k}={v}" for k, v in pg_settings.items()),
        kafka_partitions=bs.config.kafka_partitions,
        scale=dataclasses.asdict(scale),
    )
    started = time.monotonic()
    code = 0
    try:
        bs.start()
        speed = report.environment["machine_speed"] = {"start": asyncio.run(bs.machine_speed())}
        asyncio.run(run(args, scale, bs, report))
        speed["end"] = asyncio.run(bs.machine_speed())
    except KeyboardInterrupt:
        log("interrupted: stopping the bench stack; partial results follow")
        code = 130
    except Exception as exc:
        log(f"failed: {type(exc).__name__}: {exc}; logs in {bs.stack.logs}")
        bs.keep = True
        code = 1
        import traceback

        traceback.print_exc()
    finally:
        try:
            bs.down()
        except Exception as exc:
            log(f"stopping the bench stack: {type(exc).__name__}: {exc}")
    report.environment["total_seconds"] = round(time.monotonic() - started, 1)
    if report.sections:
        md, js = report.write(args.results)
        print(report.markdown())
        log(f"results written to {md} and {js}")
    return code


if __name__ == "__main__":
    sys.exit(main())
