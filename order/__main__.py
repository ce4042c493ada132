"""`order api|relay|migrate` (also `python -m order ...`)."""

from __future__ import annotations

from order.settings import Settings
from shared.command_api import command_main


def main() -> None:
    command_main("order", Settings)


if __name__ == "__main__":
    main()
