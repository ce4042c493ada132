"""Settings every service has; each service extends it with its own prefix."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")

    kafka_bootstrap_servers: str = Field(default="127.0.0.1:9092", validation_alias="KAFKA_BOOTSTRAP_SERVERS")
    kafka_topic_prefix: str = Field(
        default="",
        validation_alias="KAFKA_TOPIC_PREFIX",
        description="prepended to every topic name, so that several environments can share one cluster",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", validation_alias="KAFKA_SECURITY_PROTOCOL"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="PLAIN", validation_alias="KAFKA_SASL_MECHANISM"
    )
    kafka_sasl_username: str | None = Field(default=None, validation_alias="KAFKA_SASL_USERNAME")
    kafka_sasl_password: str | None = Field(default=None, validation_alias="KAFKA_SASL_PASSWORD", repr=False)
    kafka_ssl_cafile: str | None = Field(
        default=None, validation_alias="KAFKA_SSL_CAFILE", description="CA certificate(s) that signed the brokers'"
    )
    kafka_request_timeout_ms: int = Field(default=10000, ge=1000, validation_alias="KAFKA_REQUEST_TIMEOUT_MS")
    log_level: str = Field(default="INFO", validation_alias="LOG_LEVEL")
    log_format: Literal["json", "text", "auto"] = Field(default="auto", validation_alias="LOG_FORMAT")


class CommandServiceSettings(CommonSettings):
    """What a command service (order, goods) has beyond the common settings."""

    database_url: str
    owner_database_url: str = Field(description="the database's owner role: migrations")
    db_acquire_timeout: float = Field(
        default=5.0, gt=0, description="seconds a request waits for a pooled connection before it answers 503"
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    db_pool_size: int = Field(default=20, ge=1, description="database connections per API worker process")
    api_workers: int = Field(default=1, ge=1, le=64, description="uvicorn worker processes of the API")
    accept_form_writes: bool = Field(
        default=True,
        description="accept form and query fields on writes, as the original Go clients send them (see CSRF)",
    )
    relay_batch_size: int = Field(default=1000, ge=1)
    relay_poll_interval: float = Field(default=1.0, gt=0)
    relay_delivery_timeout: float = Field(
        default=15.0, gt=0, description="seconds Kafka has to acknowledge a batch before the relay gives it up"
    )
    relay_leader_lease: float = Field(
        default=30.0,
        ge=5,
        description="seconds after which PostgreSQL ends a leading relay's silent session, so a standby takes over",
    )
    relay_max_backoff: float = Field(default=5.0, gt=0)
    relay_metrics_port: int = Field(default=0, ge=0, le=65535, description="the relay's /metrics port (0: none)")

    @model_validator(mode="after")
    def _lease_outlasts_a_delivery(self) -> CommandServiceSettings:
        # A leader waiting for Kafka sends nothing to PostgreSQL; the lease must not end it meanwhile.
        if self.relay_leader_lease <= self.relay_delivery_timeout + self.relay_poll_interval:
            raise ValueError("relay_leader_lease must exceed relay_delivery_timeout + relay_poll_interval")
        return self
