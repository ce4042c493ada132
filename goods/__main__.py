"""`goods api|relay|migrate` (also `python -m goods ...`)."""

from __future__ import annotations

from goods.settings import Settings
from shared.command_api import command_main


def main() -> None:
    command_main("goods", Settings)


if __name__ == "__main__":
    main()
