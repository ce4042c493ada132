"""`order api|relay|migrate|status|resync` (also `python -m order ...`)."""

from __future__ import annotations

from order.repository import ORDER
from order.settings import Settings
from shared.command.api import command_main


def main() -> None:
    command_main("order", Settings, ORDER)


if __name__ == "__main__":
    main()
