"""`python -m devstack up|down|clean|status [--json]|install-kafka`: the Makefile's back end."""

from __future__ import annotations

import argparse
import os
import sys

from devstack import sessions
from devstack.config import StackConfig
from devstack.databases import init_sql
from devstack.errors import StackError
from devstack.kafka_jars import install_jars
from devstack.paths import kafka_libs_dir
from devstack.stack import Stack
from devstack.status import dump, render_status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "clean", "status", "install-kafka", "infra", "init-sql"])
    parser.add_argument("--json", action="store_true", help="status: print JSON instead of a line per process")
    args = parser.parse_args(argv)
    try:
        config = StackConfig.from_env(os.environ)
        stack = Stack(config)
        if args.command == "init-sql":
            print(init_sql(), end="")
        elif args.command == "install-kafka":
            install_jars(kafka_libs_dir())
        elif args.command == "infra":
            stack.start_infrastructure()
        elif args.command == "up":
            stack.up()
            stack.print_summary()
        elif args.command == "down":
            stack.down()
        elif args.command == "clean":
            stack.clean()
            sessions.clean_abandoned(announce=True)
        else:
            # Exit status 0 only if everything runs (STATUS_* in devstack/status.py).
            status = stack.status()
            text, code = render_status(status)
            print(dump(status) if args.json else text)
            return code
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
