"""Kafka clients as every process of the project builds them, and how they are let go.

One place for the connection and security settings (`client_options`), for
telling a refusal from an outage (`KafkaRefused`), for the producer's delivery
guarantees (`producer`), and for closing a producer whose broker does not
answer (`close_producer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    IllegalSaslStateError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.structs import RecordMetadata

from shared.settings import CommonSettings

log = logging.getLogger(__name__)


class DeliveryTimeout(KafkaTimeoutError):  # type: ignore[misc]
    """Kafka did not acknowledge a batch within the delivery timeout."""


class KafkaRefused(Exception):
    """The brokers answer but refuse this client: wrong credentials, SASL mechanism or CA.

    Retrying cannot help, so a process stops on it with this message (as Kafka's
    own clients do on an AuthenticationException). aiokafka itself reports it
    only as "Unable to bootstrap", which reads like an outage.
    """


# What a broker that answers says when it will not take this client's identity.
_REFUSALS: tuple[type[BaseException], ...] = (
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
    IllegalSaslStateError,
    ssl.SSLCertVerificationError,  # a broker certificate that the CA file does not vouch for
)


async def raise_if_refused(settings: CommonSettings) -> None:
    """After a failed start: raise KafkaRefused if a bootstrap broker refuses this client; else return
    (the brokers are down or unreachable, which is worth waiting out)."""
    options = client_options(settings)
    options.pop("bootstrap_servers")
    for host, port, _ in collect_hosts(settings.kafka_bootstrap_servers, randomize=False):
        try:
            conn = await create_conn(host, port, request_timeout_ms=settings.kafka_request_timeout_ms, **options)
        except _REFUSALS as exc:
            who = f"user {settings.kafka_sasl_username!r}, " if settings.kafka_sasl_username else ""
            raise KafkaRefused(
                f"Kafka at {host}:{port} refused this client ({who}{settings.kafka_security_protocol}"
                f"{', ' + settings.kafka_sasl_mechanism if 'SASL' in settings.kafka_security_protocol else ''}): "
                f"{type(exc).__name__}: {exc}; check KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_* and KAFKA_SSL_CAFILE"
            ) from exc
        except (OSError, KafkaError, TimeoutError):  # not a refusal: the start's own error stands
            continue
        conn.close()
        return


def client_options(settings: CommonSettings) -> dict[str, Any]:
    """Bootstrap servers and security options for any aiokafka client."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl.create_default_context(cafile=settings.kafka_ssl_cafile)
    return options


def producer(settings: CommonSettings, client_id: str, **overrides: Any) -> AIOKafkaProducer:
    """An idempotent producer that waits for every in-sync replica (acks=all): no acknowledged
    message is lost when a broker fails, and a retried batch is not written twice."""
    options: dict[str, Any] = {
        **client_options(settings),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 2,
        "request_timeout_ms": settings.kafka_request_timeout_ms,
        "client_id": client_id,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


class _Startable(Protocol):
    async def start(self) -> None: ...


async def start_client(client: _Startable, settings: CommonSettings) -> None:
    """Start any aiokafka client (producer, consumer, admin); KafkaRefused if the brokers
    refuse it, else the start's own error (closing the client is the caller's)."""
    try:
        await client.start()
    except KafkaConnectionError:
        await raise_if_refused(settings)
        raise


async def start_producer(settings: CommonSettings, client_id: str, **overrides: Any) -> AIOKafkaProducer:
    """A started producer; its start is bounded by the request timeout."""
    started = producer(settings, client_id, **overrides)
    try:
        async with asyncio.timeout(settings.kafka_request_timeout_ms / 1000 + 5):
            await start_client(started, settings)
    except BaseException:
        await close_producer(started)
        raise
    return started


async def deliver(futures: list[asyncio.Future[RecordMetadata]], timeout: float) -> list[RecordMetadata]:
    """Wait for the acknowledgements of sent messages, at most `timeout` seconds;
    their topics, partitions and offsets, in the order sent.

    aiokafka's idempotent producer never expires a batch: it retries until the
    broker answers, so without a deadline a send to an unreachable broker waits
    forever.
    """
    try:
        async with asyncio.timeout(timeout):
            return list(await asyncio.gather(*futures))
    except TimeoutError:
        raise DeliveryTimeout(f"Kafka did not acknowledge {len(futures)} messages within {timeout:.0f}s") from None


async def close_producer(p: AIOKafkaProducer, timeout: float = 2.0) -> None:
    """Stop `p` within `timeout` seconds even if its broker does not answer.

    `AIOKafkaProducer.stop()` first waits until every pending batch is
    delivered, which never happens while the broker is unreachable. After
    `timeout`, the pending batches are failed and the sender and the
    connections closed (aiokafka has no public call for this).
    """
    try:
        await asyncio.wait_for(p.stop(), timeout)
        return
    except TimeoutError:
        log.warning("Kafka producer did not flush in time; dropping its pending messages", extra={"s": timeout})
    except Exception as exc:  # the broker is gone anyway
        log.debug("Kafka producer stop failed", extra={"error": f"{type(exc).__name__}: {exc}"})
    with contextlib.suppress(Exception):
        p._message_accumulator.fail_all(KafkaTimeoutError("producer closed before delivery"))
        if p._sender is not None:
            await asyncio.wait_for(p._sender.close(), timeout)
        await asyncio.wait_for(p.client.close(), timeout)
