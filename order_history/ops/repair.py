"""`reconcile --repair`: the command services resync what differs, and the read model is waited for.

`repair()` asks the command services to resync the entities that differ
(`order resync --ids`, `goods resync --ids`, run with this process's
environment), waits until the read model agrees on them, then checks again.
A row the read model has and the command side does not (`exists`: no / yes)
is asked for with `--remove-unassigned` and the highest version the read model
holds for those rows: an id its service deleted is published as deleted for
good; one its sequence has not handed out yet (another producer's, or lost by
a restore from backup) as removed at that version, which is also where the
service will start the entity it later creates with that id (shared/command/resync.py).
The repair waits only for the snapshots the services say they published, and
stops waiting for one that can no longer apply: the read model holds a newer
version of its entity than the snapshot and than the command side.

Contract: `repair()` returns what still differs among the entities it was
given, once the read model agrees on every published snapshot or `timeout`
has passed; a resync that fails raises `RepairError`. `requests()` and
`out_of_reach()` decide without I/O.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from order_history.ops.checks import Difference
from order_history.ops.reconciler import ENTITIES, Reconciler
from shared.events import MAX_VERSION


def _ids(found: Sequence[Difference], entity: str) -> list[int]:
    return sorted({d.id for d in found if d.entity == entity})


@dataclass(frozen=True)
class Request:
    """One `<service> resync --ids ...` of the repair; `remove_unassigned`: its `--remove-unassigned`."""

    service: str
    ids: tuple[int, ...]
    remove_unassigned: int | None = None

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", self.service, "resync", "--json", "--ids", ",".join(map(str, self.ids))]
        if self.remove_unassigned is not None:
            argv += ["--remove-unassigned", str(self.remove_unassigned)]
        return argv


def requests(found: Sequence[Difference], read_versions: Mapping[str, Mapping[int, int]]) -> list[Request]:
    """The resyncs that repair `found`, given the read model's version of each entity named there.

    A row only the read model has is removed, if its id was never handed out,
    at the highest version the read model holds among those rows: at or above
    each of them, so that every copy of their events stays out, and the
    service's floor for the ids. A version with nothing above it cannot be a
    floor (the entity created later would have no version to start at); such a
    row goes with the others, and is deleted for good if its id was handed out,
    else left as it is (reported, not waited for).
    """
    out = []
    for entity in ENTITIES:
        extra = {d.id for d in found if d.entity == entity and d.field == "exists" and d.command == "no"}
        versions = read_versions.get(entity, {})
        removable = sorted(i for i in extra if versions.get(i, 0) < MAX_VERSION)
        rest = sorted(set(_ids(found, entity)) - set(removable))
        if rest:
            out.append(Request(entity, tuple(rest)))
        if removable:
            version = max([1, *(versions.get(i, 0) for i in removable)])
            out.append(Request(entity, tuple(removable), version))
    return out


def out_of_reach(
    published: Mapping[int, int], read_versions: Mapping[int, int], command_versions: Mapping[int, int]
) -> set[int]:
    """Ids whose snapshot can no longer apply, and no other event can fix instead: the read
    model holds a newer version than the snapshot published for it and than the command side has.
    (A snapshot applies over a row whose version is not newer; every event on its way from the
    command side is at most the version it has now.)"""
    return {i for i, v in published.items() if read_versions.get(i, 0) > max(v, command_versions.get(i, 0))}


async def _resync(request: Request) -> dict[int, int]:
    """`<service> resync --ids ...`, as the operator would run it (same environment); the
    version of the snapshot it published for each id (an id it skipped is not there)."""
    argv = request.argv()
    result = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, env=dict(os.environ))
    if result.returncode != 0:
        raise RepairError(f"{request.service} resync failed: {result.stderr.strip() or result.stdout.strip()}")
    try:
        snapshots = json.loads(result.stdout)["snapshots"]
        return {int(k): int(v) for k, v in snapshots.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RepairError(f"{request.service} resync printed no snapshots: {result.stdout.strip()[:200]}") from exc


class RepairError(Exception):
    """A resync the repair asked for failed."""


async def repair(reconciler: Reconciler, found: Sequence[Difference], timeout: float) -> list[Difference]:
    """Resync what differs, wait until the read model agrees on the ids whose snapshots were
    published (or `timeout`, or until they cannot apply any more); what still differs."""
    ids = {entity: _ids(found, entity) for entity in ENTITIES}
    read_versions = {entity: await reconciler.versions("read", entity, ids[entity]) for entity in ENTITIES}
    waiting: dict[str, dict[int, int]] = {entity: {} for entity in ENTITIES}  # entity -> id -> snapshot version
    # Each resync is a process of its own (most of its time is starting up): all at once.
    asked = requests(found, read_versions)
    for request, published in zip(asked, await asyncio.gather(*map(_resync, asked)), strict=True):
        waiting[request.service].update(published)
    deadline = time.monotonic() + timeout
    while True:
        left = await reconciler.compare_ids(waiting["order"], waiting["goods"])
        differing = {entity: {d.id for d in left if d.entity == entity} for entity in ENTITIES}
        for entity in ENTITIES:
            pending = {i: v for i, v in waiting[entity].items() if i in differing[entity]}
            if pending:
                read = await reconciler.versions("read", entity, sorted(pending))
                command = await reconciler.versions("command", entity, sorted(pending))
                for i in out_of_reach(pending, read, command):
                    del pending[i]
            waiting[entity] = pending
        if not any(waiting.values()) or time.monotonic() > deadline:
            return await reconciler.compare_ids(ids["order"], ids["goods"])
        await asyncio.sleep(0.5)
