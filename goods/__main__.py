"""`python -m goods api|relay|migrate`."""

from __future__ import annotations

import argparse
import asyncio
import sys

from goods.settings import Settings
from shared.entrypoints import run_api, run_migrations, run_relay


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m goods")
    parser.add_argument("command", choices=["api", "relay", "migrate"])
    parser.add_argument("--instance", default="0", help="instance name (shown in process lists)")
    args = parser.parse_args()
    settings = Settings()
    if args.command == "api":
        run_api("goods.api:create_app", settings.host, settings.port, settings.api_workers, settings)
    elif args.command == "relay":
        sys.exit(asyncio.run(run_relay("goods", settings)))
    else:
        asyncio.run(run_migrations("goods", settings.database_url, settings))


if __name__ == "__main__":
    main()
