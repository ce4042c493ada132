from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from shared.settings import CommonSettings

# The cursor key of a process given none. It is in the source, so anyone can sign cursors with it: the API
# warns at startup when it serves with it (`make up` and the tests set a key of their own).
DEV_CURSOR_KEY = "order-history-dev-cursor-key"


class Settings(CommonSettings):
    """Environment variables ORDER_HISTORY_*, plus KAFKA_* and LOG_*."""

    model_config = SettingsConfigDict(env_prefix="ORDER_HISTORY_", extra="ignore")

    database_url: str = Field(
        default="postgresql://order_history_svc:order_history_svc@127.0.0.1:5432/order_history",
        description="the consumer's: reads and writes the read model",
    )
    query_database_url: str = Field(
        default="postgresql://order_history_reader:order_history_reader@127.0.0.1:5432/order_history",
        description="the API's: a read-only role (or a streaming replica)",
    )
    order_reader_database_url: str = Field(
        default="postgresql://order_reader:order_reader@127.0.0.1:5432/orders",
        description="reconcile: a read-only role of the order service's database",
    )
    goods_reader_database_url: str = Field(
        default="postgresql://goods_reader:goods_reader@127.0.0.1:5432/goods",
        description="reconcile: a read-only role of the goods service's database",
    )
    owner_database_url: str = Field(
        default="postgresql://order_history_owner:order_history_owner@127.0.0.1:5432/order_history",
        description="the owner role: migrations and reset",
    )
    db_acquire_timeout: float = Field(
        default=5.0, gt=0, description="seconds a request waits for a pooled connection before it answers 503"
    )
    cursor_key: SecretStr = Field(
        default=SecretStr(DEV_CURSOR_KEY),
        description="signs the list's page cursors: the same on every API instance; set your own in production "
        "(the API warns at startup while it uses the public development key)",
    )
    created_at_skew: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="seconds by which an order's created_at may precede that of an order with a smaller id "
        "(see order_history/api/queries.py)",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8082, ge=1, le=65535)
    db_pool_size: int = Field(default=20, ge=1, description="database connections per API worker process")
    api_workers: int = Field(default=1, ge=1, le=64, description="uvicorn worker processes of the API")
    metrics_port: int = Field(default=8092, ge=0, le=65535, description="the consumer's /metrics port (0: none)")
    consumer_group: str = "order-history"
    batch_max_records: int = Field(default=15000, ge=1, description="events the consumer applies per batch")
    apply_connections: int = Field(
        default=2, ge=1, le=16, description="lanes: transactions applied at once, each to its own partitions"
    )
    fetch_timeout_ms: int = Field(default=100, ge=1)
    # With batch_max_records and apply_connections, these bound the consumer's
    # memory in a catch-up: aiokafka holds one fetched response per partition
    # beside the lanes' parts. Kafka's own 1 MiB per partition costs no
    # throughput here and holds far less than 4 MiB did (docs/benchmarks.md,
    # "Consumer" in Latest results).
    fetch_max_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="bytes of messages one fetch from Kafka may return"
    )
    partition_fetch_max_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="bytes of one partition's messages one fetch may return"
    )
    # The prefetcher takes this many messages from aiokafka at a time, decodes them,
    # then lets the loop run (to send the current batch's next statement), so that
    # Python's work on the next batch and PostgreSQL's on the current one overlap
    # without delaying the current one (docs/benchmarks.md, third round).
    fetch_slice: int = Field(default=500, ge=1)
    # While a lane is full, how long the prefetcher waits for the other partitions'
    # messages: the full lane's partitions are not fetched until it returns.
    fetch_while_full_ms: int = Field(default=5, ge=0)
    session_timeout_ms: int = Field(
        default=10000, ge=6000, description="how soon the group notices a dead consumer and rebalances"
    )
    consumer_max_backoff: float = Field(default=5.0, gt=0)
    freshness_interval: float = Field(
        default=0.25,
        gt=0,
        le=60,
        description="seconds between two looks of the consumer at the log ends: for the lag metric, and to record "
        "that it is caught up, which bounds the staleness the API reports of an idle read model (docs/freshness.md)",
    )
    # The broker answers one request of a connection at a time: a look at the log ends waits
    # behind the fetch in flight, which an idle partition's broker holds this long. Kafka's own
    # default would make an idle read model's staleness up to half a second larger.
    fetch_max_wait_ms: int = Field(
        default=100,
        ge=1,
        le=60000,
        description="milliseconds the broker may hold a fetch while it has no new message (idle fetches per "
        "second: about one per this)",
    )
    stuck_after: float = Field(
        default=60.0,
        gt=0,
        description="seconds a partition with lag may go without advancing before `status` calls it stuck",
    )
    dlq_delivery_timeout: float = Field(default=15.0, gt=0, description="seconds Kafka has to take a dead letter")
    # The divergence sampler (order_history/ops/sampler.py), run by the consumer processes: the
    # instance holding its lock compares `divergence_ranges` id ranges every `divergence_interval`.
    # A full pass over U ranges (every check's ids / range size) takes ceil(U / ranges) intervals;
    # docs/operations.md states the detection bound that follows.
    divergence_interval: float = Field(
        default=10.0, gt=0, le=3600, description="seconds between two steps of the divergence sampler"
    )
    divergence_ranges: int = Field(
        default=4,
        ge=0,
        le=10000,
        description="id ranges the divergence sampler compares per step (0: it compares nothing, and the "
        "full-pass age grows)",
    )
    divergence_range_size: int = Field(
        default=10000, ge=1, description="ids per range the divergence sampler compares (as reconcile's --range-size)"
    )
    divergence_settle: float = Field(
        default=30.0,
        ge=0,
        le=86400,
        description="seconds a difference must last, with the command row unwritten meanwhile, before the "
        "sampler counts it as divergent: longer than the pipeline's lag in normal operation",
    )
