from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import CommandServiceSettings


class Settings(CommandServiceSettings):
    """Environment variables ORDER_*, plus KAFKA_BOOTSTRAP_SERVERS and LOG_*."""

    model_config = SettingsConfigDict(env_prefix="ORDER_", extra="ignore")

    database_url: str = "postgresql://order_svc:order_svc@127.0.0.1:5432/orders"
    owner_database_url: str = "postgresql://order_owner:order_owner@127.0.0.1:5432/orders"
    port: int = Field(default=8080, ge=1, le=65535)
    relay_metrics_port: int = Field(default=8090, ge=0, le=65535, description="the relay's /metrics port (0: none)")
