"""`goods api|relay|migrate|status|resync` (also `python -m goods ...`)."""

from __future__ import annotations

from goods.repository import GOODS
from goods.settings import Settings
from shared.command.api import command_main


def main() -> None:
    command_main("goods", Settings, GOODS)


if __name__ == "__main__":
    main()
