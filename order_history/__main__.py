"""`order-history api|consumer|migrate|reset|reset-positions|status|orphans|reconcile|explain|dlq|rebuild`.

Also `python -m order_history ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import sys
from typing import Any

from order_history.consumer.runner import HistoryConsumer
from order_history.ops import dlq, explain, operations, orphans, rebuild, reconcile
from order_history.ops import status as read_side_status
from order_history.ops.watch import TrustWatch
from order_history.settings import Settings
from shared.backoff import Backoff
from shared.entrypoints import at_least, run_api, run_migrations, supervise
from shared.kafka import KafkaRefused
from shared.logs import configure_logging
from shared.metrics import serve as serve_metrics

log = logging.getLogger("order_history")


async def run_consumer(settings: Settings, instance: str) -> int:
    """Run the consumer until SIGTERM/SIGINT; the process's exit status (1: its loop died)."""
    configure_logging(settings.log_level, settings.log_format)
    # A batch in flight keeps some 150,000 objects alive for about a second, and
    # with the default threshold (a collection every 700 allocations) the cycle
    # collector walks them again and again (docs/benchmarks.md, third round). The
    # consumer's objects are freed by reference counting (they form no cycles),
    # so collecting less often costs no memory.
    gc.set_threshold(100_000, 20, 100)
    consumer = HistoryConsumer(settings, instance)
    serve_metrics(settings.host, settings.metrics_port, "order-history consumer")
    # The divergence sampler and the trust figures, beside the consumer (order_history/ops/watch.py).
    watch = TrustWatch(settings, instance)
    watching = asyncio.create_task(watch.run(consumer.stop_event))

    async def start_then_run() -> None:
        backoff = Backoff(0.5, 5.0, stop=consumer.stop_event)
        while True:
            try:
                await consumer.start()
                break
            except KafkaRefused:  # waiting cannot fix credentials
                await consumer.close()
                raise
            except Exception as exc:  # Kafka or the database not up yet
                log.warning("consumer cannot start yet, retrying", extra={"error": f"{type(exc).__name__}: {exc}"})
                await consumer.close()
                await backoff.wait()
                if consumer.stopping:
                    return
        log.info("consumer started", extra={"group": settings.consumer_group, "instance": instance})
        await consumer.run()

    try:
        status = await supervise(start_then_run(), consumer.request_stop, "order-history consumer")
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
        await watch.close()
        await consumer.stop()
    log.info(
        "consumer stopped",
        extra={
            "events": consumer.total.events,
            "dead_lettered": consumer.total.dead_lettered,
            "parked": consumer.total.parked,
        },
    )
    return status


def _repair_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """reconcile and dlq: finding and fixing what the read model got wrong."""
    reconcile_parser = commands.add_parser(
        "reconcile",
        parents=[common],
        help="compare the command databases with the read model; --repair resyncs what differs",
        description="Compare every order (existence, user, goods count) and every goods item (existence, order, "
        "name) of the command databases with the read model, by per-id-range checksums first, then the rows of "
        "the ranges that differ. Exit 0: 0 differences; exit 1: a table of them.",
    )
    reconcile_parser.add_argument("--repair", action="store_true", help="resync what differs, wait, check again")
    reconcile_parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    reconcile_parser.add_argument(
        "--range-size", type=at_least(1), default=10000, help="ids per checksum range (10000)"
    )
    reconcile_parser.add_argument(
        "--repair-timeout",
        type=at_least(0, float),
        default=120.0,
        help="seconds to wait for the resynced entities (120)",
    )
    explain_parser = commands.add_parser(
        "explain",
        parents=[common],
        help="one order's read-model row and its goods: versions, the event last applied, agreement, dead letters",
        description="Print the read model's row of ORDER_ID and of its live goods: each one's version and its "
        "service's, the topic, partition and offset of the last event applied to it, whether the command databases "
        "agree (reconcile's comparison), and the dead letters and parked records of the order and its goods. "
        "Exit 0: the read model has the order; 1: a database cannot be read; 2: usage; 3: the read model has no "
        "such order.",
    )
    explain_parser.add_argument("order_id", type=explain.order_id, metavar="ORDER_ID", help="the order's id")
    explain_parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    explain_parser.add_argument(
        "--goods-limit", type=at_least(0), default=100, help="show at most N of its goods, by id (100)"
    )
    rebuild_parser = commands.add_parser(
        "rebuild",
        parents=[common],
        help="build a new read model from the topics beside the serving one, then switch over atomically",
        description="Build a new read model from the beginning of the topics in schema read_model_next while the "
        "current one serves, then switch the APIs and consumers over to it in one transaction, and drop the old "
        "one. Refused if retention deleted events from a topic.",
    )
    rebuild_parser.add_argument(
        "--switch-lag", type=at_least(0), default=1000, help="switch once the rebuild is this few events behind (1000)"
    )
    rebuild_parser.add_argument("--keep-old", action="store_true", help="keep the old model as read_model_retired")
    dlq_parser = commands.add_parser(
        "dlq", parents=[common], help="dead letters and parked records: list, show, replay, purge; skip a record"
    )
    dlq_actions = dlq_parser.add_subparsers(dest="action", required=True, metavar="action")
    dlq_list = dlq_actions.add_parser("list", help="every dead letter: id, time, event type, reason")
    dlq_list.add_argument("--json", action="store_true", help="print JSON instead of a table")
    dlq_show = dlq_actions.add_parser("show", help="one dead letter whole, its message included (JSON)")
    dlq_show.add_argument("ids", nargs="+", metavar="ID", help="TOPIC:PARTITION:OFFSET, as `dlq list` shows it")
    dlq_show.add_argument("--full", action="store_true", help="print keys and values whole (else their start)")
    dlq_skip = dlq_actions.add_parser(
        "skip",
        help="park the one record that holds a partition and move the partition on past it",
        description="Park the record at OFFSET of TOPIC's PARTITION (as `status` names a stuck partition: its "
        "position is OFFSET) in the dead_letters table, and move the partition's position past it, in one "
        "transaction. Refused unless that record is the next one to apply. Safe while the consumers run.",
    )
    dlq_skip.add_argument("topic", help="the topic, as `status` shows it (e.g. goods.events)")
    dlq_skip.add_argument("partition", type=at_least(0), help="the partition")
    dlq_skip.add_argument("offset", type=at_least(0), help="the offset of the record holding the partition")
    dlq_skip.add_argument("--reason", help="a note recorded with it (who, why)")
    for action, what in (
        ("replay", "decode and apply dead letters again (after a fix or an upcaster); remove those that apply"),
        ("purge", "remove dead letters (the DLQ topic keeps its copies)"),
    ):
        sub = dlq_actions.add_parser(action, help=what, description=what[0].upper() + what[1:] + ".")
        sub.add_argument("ids", nargs="*", metavar="ID", help="TOPIC:PARTITION:OFFSET, as `dlq list` shows it")
        sub.add_argument("--all", action="store_true", help="every dead letter")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--instance", default="0", help="instance name (for logs and the Kafka client id)")
    parser = argparse.ArgumentParser(prog="order-history", description="the order-history read side")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    commands.add_parser("api", parents=[common], help="serve the order-history HTTP API")
    commands.add_parser("consumer", parents=[common], help="apply the event topics to the read model")
    commands.add_parser("migrate", parents=[common], help="apply the database migrations")
    commands.add_parser(
        "reset", parents=[common], help="empty the read model and its positions (consumers stopped): it is rebuilt"
    )
    reset_positions = commands.add_parser(
        "reset-positions",
        parents=[common],
        help="set the stored positions of a topic (consumers stopped), after the topic was recreated",
        description="Set the consumer group's stored positions of TOPIC's partitions to the log's start or end. "
        "For a topic that was deleted and created again: --to start applies its new messages. The consumers "
        "must be stopped.",
    )
    reset_positions.add_argument("topic", help="the topic as the contract names it: order.events or goods.events")
    reset_positions.add_argument("--to", choices=["start", "end"], required=True, help="the log's start or end")
    reset_positions.add_argument(
        "--partition", type=at_least(0), action="append", help="only this partition (repeatable)"
    )
    status = commands.add_parser(
        "status",
        parents=[common],
        help="positions, log ends and lag per partition, freshness, dead letters, divergence, orphan goods",
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    orphans_parser = commands.add_parser(
        "orphans",
        parents=[common],
        help="goods whose order the read model has not received yet, oldest first",
        description="List the live goods of the read model whose order is only a placeholder (its event has not "
        "arrived), oldest first, with their age from the goods' created_at, then a one-line summary. Exit 0 "
        "whether or not there are any; 1 if the read database cannot be read.",
    )
    orphans_parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    orphans_parser.add_argument("--limit", type=at_least(0), default=100, help="list at most N of them (100)")
    _repair_commands(commands, common)
    return parser


def _dlq(parser: argparse.ArgumentParser, args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "skip":
        return asyncio.run(dlq.skip(settings, args.topic, args.partition, args.offset, args.reason))
    ids = getattr(args, "ids", [])
    every = getattr(args, "all", False)
    if ids and every:
        parser.error("give dead letter ids or --all, not both")
    as_json, full = getattr(args, "json", False), getattr(args, "full", False)
    return asyncio.run(dlq.run(settings, args.action, ids, every, as_json, full))


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    settings = Settings()
    if args.command == "api":
        run_api("order_history.api.app:create_app", settings.host, settings.port, settings.api_workers, settings)
    elif args.command == "consumer":
        sys.exit(asyncio.run(run_consumer(settings, args.instance)))
    elif args.command == "migrate":
        asyncio.run(run_migrations("order_history", settings.owner_database_url, settings))
    elif args.command == "reset":
        sys.exit(asyncio.run(operations.reset(settings)))
    elif args.command == "reconcile":
        sys.exit(asyncio.run(reconcile.run(settings, args.repair, args.json, args.range_size, args.repair_timeout)))
    elif args.command == "explain":
        sys.exit(asyncio.run(explain.run(settings, args.order_id, args.json, args.goods_limit)))
    elif args.command == "rebuild":
        configure_logging("WARNING", settings.log_format)
        sys.exit(asyncio.run(rebuild.run(settings, args.switch_lag, args.keep_old)))
    elif args.command == "dlq":
        sys.exit(_dlq(parser, args, settings))
    elif args.command == "status":
        sys.exit(asyncio.run(read_side_status.status(settings, args.json)))
    elif args.command == "orphans":
        sys.exit(asyncio.run(orphans.run(settings, args.json, args.limit)))
    else:
        sys.exit(asyncio.run(operations.reset_positions(settings, args.topic, args.to, args.partition)))


if __name__ == "__main__":
    main()
