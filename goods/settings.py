from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import CommandServiceSettings


class Settings(CommandServiceSettings):
    """Environment variables GOODS_*, plus KAFKA_BOOTSTRAP_SERVERS and LOG_*."""

    model_config = SettingsConfigDict(env_prefix="GOODS_", extra="ignore")

    database_url: str = "postgresql://goods_svc:goods_svc@127.0.0.1:5432/goods"
    owner_database_url: str = "postgresql://goods_owner:goods_owner@127.0.0.1:5432/goods"
    port: int = Field(default=8081, ge=1, le=65535)
    relay_metrics_port: int = Field(default=8091, ge=0, le=65535, description="the relay's /metrics port (0: none)")
