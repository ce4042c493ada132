"""Settings every service has; each service extends it with its own prefix."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")

    kafka_bootstrap_servers: str = Field(default="127.0.0.1:9092", validation_alias="KAFKA_BOOTSTRAP_SERVERS")
    kafka_topic_prefix: str = Field(
        default="",
        validation_alias="KAFKA_TOPIC_PREFIX",
        description="prepended to every topic name, so that several environments can share one cluster",
    )
    log_level: str = Field(default="INFO", validation_alias="LOG_LEVEL")
    log_format: Literal["json", "text", "auto"] = Field(default="auto", validation_alias="LOG_FORMAT")


class CommandServiceSettings(CommonSettings):
    """What a command service (order, goods) has beyond the common settings."""

    database_url: str
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    db_pool_size: int = Field(default=20, ge=1, description="database connections per API worker process")
    api_workers: int = Field(default=1, ge=1, le=64, description="uvicorn worker processes of the API")
    relay_batch_size: int = Field(default=1000, ge=1)
    relay_poll_interval: float = Field(default=1.0, gt=0)
    outbox_retention_seconds: float = Field(default=24 * 3600.0, ge=0)
