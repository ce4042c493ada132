"""Why a command refused to change an entity; the HTTP layer maps them to 404 and 412."""

from __future__ import annotations


class NotFound(Exception):
    def __init__(self, entity: str, entity_id: int) -> None:
        super().__init__(f"{entity} {entity_id} does not exist")
        self.entity = entity
        self.entity_id = entity_id


class VersionMismatch(Exception):
    def __init__(self, entity: str, entity_id: int, expected: int | None, current: int) -> None:
        super().__init__(
            f"{entity} {entity_id} is at version {current}, not {expected} as If-Match requires; "
            "fetch it again and retry"
        )
        self.current = current
