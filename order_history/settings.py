from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import CommonSettings


class Settings(CommonSettings):
    """Environment variables ORDER_HISTORY_*, plus KAFKA_BOOTSTRAP_SERVERS and LOG_*."""

    model_config = SettingsConfigDict(env_prefix="ORDER_HISTORY_", extra="ignore")

    database_url: str = "postgresql://order_history_svc:order_history_svc@127.0.0.1:5432/order_history"
    host: str = "127.0.0.1"
    port: int = Field(default=8082, ge=1, le=65535)
    db_pool_size: int = Field(default=20, ge=1, description="database connections per API worker process")
    api_workers: int = Field(default=1, ge=1, le=64, description="uvicorn worker processes of the API")
    consumer_group: str = "order-history"
    batch_max_records: int = Field(default=15000, ge=1, description="events the consumer applies per batch")
    apply_connections: int = Field(
        default=2, ge=1, le=16, description="lanes: transactions applied at once, each to its own partitions"
    )
    fetch_timeout_ms: int = Field(default=100, ge=1)
    session_timeout_ms: int = Field(
        default=10000, ge=6000, description="how soon the group notices a dead consumer and rebalances"
    )
