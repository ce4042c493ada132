"""The Kafka nodes' authenticated listeners: their one SASL account, the broker settings, a TLS authority.

Every node can open a SASL listener (and a SASL_SSL one, with a certificate
authority made here by `openssl`), so that tests run the clients through
authentication and TLS. Contract: `sasl_settings()` is what a node's
configuration needs for SASL on the listeners named (PLAIN and SCRAM, the
SCRAM credentials being written when its storage is formatted: devstack/kafka_node.py);
`make_tls()` makes the CA and the broker's PEM key store once and returns the
CA's file, which clients trust.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from devstack.errors import StackError
from devstack.processes import run

# The one account of the SASL listeners (local stacks and tests only), known to
# the broker as PLAIN and as SCRAM-SHA-256 / SCRAM-SHA-512 credentials.
SASL_USERNAME = "order-history"
SASL_PASSWORD = "order-history-dev-secret"
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def sasl_settings(listeners: Sequence[str]) -> dict[str, str]:
    plain = f'org.apache.kafka.common.security.plain.PlainLoginModule required user_{SASL_USERNAME}="{SASL_PASSWORD}";'
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    out = {"sasl.enabled.mechanisms": ",".join(SASL_MECHANISMS)}
    for listener in listeners:
        for mechanism in SASL_MECHANISMS:
            module = plain if mechanism == "PLAIN" else scram
            out[f"listener.name.{listener.lower()}.{mechanism.lower()}.sasl.jaas.config"] = module
    return out


def make_tls(directory: Path) -> Path:
    """A certificate authority and a broker certificate for 127.0.0.1 (once); the CA's file.

    `ca.pem` is what clients trust (KAFKA_SSL_CAFILE); `broker.pem` holds the
    broker's unencrypted PKCS#8 key and certificate, Kafka's PEM key store.
    """
    ca = directory / "ca.pem"
    keystore = directory / "broker.pem"
    if ca.exists() and keystore.exists():
        return ca
    if shutil.which("openssl") is None:
        raise StackError("openssl is not installed: the SASL_SSL listener needs it (apt-get install -y openssl).")
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        run(["openssl", *args], "openssl " + args[0], cwd=str(directory))

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=order-history dev CA",
            "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "broker.key",
            "-out", "broker.csr")  # fmt: skip
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "3650", "-extfile", "san.cnf", "-out", "broker.crt")  # fmt: skip
    openssl("pkcs8", "-topk8", "-nocrypt", "-in", "broker.key", "-out", "broker.p8")
    keystore.write_text((directory / "broker.p8").read_text() + (directory / "broker.crt").read_text())
    return ca
