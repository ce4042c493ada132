"""Relays and consumer through a broker listener that requires SASL (and one that adds TLS).

The session's broker has a SASL_PLAINTEXT and a SASL_SSL listener besides its
PLAINTEXT one (devstack: PLAIN and SCRAM accounts, a CA made by openssl).
Events must flow through them with each mechanism; a wrong password or an
untrusted CA must stop a relay or a consumer with a message that says so,
within a bounded time, instead of retrying "Unable to bootstrap" forever; an
operator command that reads Kafka must say so too, and exit 1 without a
traceback.
"""

from __future__ import annotations

from typing import Any

import pytest

from devstack.kafka_security import SASL_PASSWORD, SASL_USERNAME
from tests.harness import Env, command, wait_until


def secured(env: Env, protocol: str, mechanism: str, password: str = SASL_PASSWORD, ca: bool = True) -> dict[str, Any]:
    """Settings fields of a client of the SASL_PLAINTEXT or SASL_SSL listener."""
    return {
        "kafka_bootstrap_servers": env.kafka.sasl_bootstrap
        if protocol == "SASL_PLAINTEXT"
        else env.kafka.sasl_ssl_bootstrap,
        "kafka_security_protocol": protocol,
        "kafka_sasl_mechanism": mechanism,
        "kafka_sasl_username": SASL_USERNAME,
        "kafka_sasl_password": password,
        "kafka_ssl_cafile": str(env.kafka.ca_file) if ca else None,
    }


def as_environment(fields: dict[str, Any]) -> dict[str, str]:
    return {k.upper(): str(v) for k, v in fields.items() if v is not None}


@pytest.mark.parametrize(
    ("protocol", "mechanism"),
    [("SASL_PLAINTEXT", "PLAIN"), ("SASL_PLAINTEXT", "SCRAM-SHA-512"), ("SASL_SSL", "SCRAM-SHA-256")],
)
async def test_events_flow_through_an_authenticated_listener(env: Env, protocol: str, mechanism: str) -> None:
    fields = secured(env, protocol, mechanism)
    assert ":" + str(env.stack.config.kafka_port) not in fields["kafka_bootstrap_servers"]
    env.start_relay("order", **fields)
    env.start_relay("goods", **fields)
    await env.start_consumer(**fields)
    async with env.client("order") as order, env.client("goods") as goods, env.client("order_history") as history:
        created = (await order.post("/v1/order", json={"user_id": 7})).json()["id"]
        for name in ("a", "b"):
            assert (await goods.post("/v1/goods", json={"order_id": created, "name": name})).status_code == 201

        async def listed() -> bool:
            answer = await history.get(f"/v1/order-history/{created}")
            return answer.status_code == 200 and answer.json()["goods_count"] == 2

        await wait_until(listed, 30, "the order and its two goods in the read model")


# The processes, and the operator commands that talk to Kafka (each checks Kafka before it changes anything).
REFUSED_COMMANDS = (
    ("order", "relay"),
    ("order_history", "consumer"),
    ("order_history", "status"),
    ("order_history", "rebuild"),
    ("order_history", "reset-positions", "order.events", "--to", "end"),
)


@pytest.mark.parametrize(
    ("case", "protocol", "password", "ca", "reason"),
    [
        ("wrong password", "SASL_PLAINTEXT", "not-the-password", True, "SaslAuthenticationFailed"),
        ("untrusted CA", "SASL_SSL", SASL_PASSWORD, False, "certificate verify failed"),
    ],
)
async def test_a_refused_client_stops_with_a_clear_error(
    env: Env, case: str, protocol: str, password: str, ca: bool, reason: str
) -> None:
    settings = as_environment(secured(env, protocol, "SCRAM-SHA-256", password=password, ca=ca))
    for args in REFUSED_COMMANDS:
        done = await command(env, *args, **settings)  # a hang fails here, after command's timeout
        output = done.stdout + done.stderr
        assert done.returncode == 1, f"{case}: {args} exited {done.returncode}:\n{output[-3000:]}"
        assert "refused this client" in output and reason in output, f"{case}: {args}:\n{output[-3000:]}"
        assert "Traceback" not in output
