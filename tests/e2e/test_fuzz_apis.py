"""Each API fuzzed from its own OpenAPI document by schemathesis, over HTTP, against the real processes.

Every check schemathesis has (`--checks all`), in every phase: no 5xx, every
response as documented (status, headers, body schema), documented-valid input
accepted and invalid input refused; any failure or error fails the test. The
settings (tests/schemathesis.toml) and hooks (tests/fuzz_hooks.py) drop no
input; what they do, and why, they say. `FUZZ_MAX_EXAMPLES` sets the examples
per operation and `FUZZ_MIN_REQUESTS` the requests each API gets at least (runs
with further seeds until then): one short run each in `make test`, 1,000 in
`make chaos`.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

from tests.e2e.test_end_to_end import start_services, wait_ready
from tests.harness import Env

CONFIG = Path(__file__).resolve().parents[1] / "schemathesis.toml"
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "15"))
MIN_REQUESTS = int(os.environ.get("FUZZ_MIN_REQUESTS", "0"))


async def fuzz(port: int, report: Path, seed: int) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(CONFIG),
        "run",
        f"http://127.0.0.1:{port}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(seed),
        # One worker: hypothesis describes its strategies with ast.parse, which
        # failed at random in threads here (a runtime error, not a finding).
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--request-timeout",
        "30",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(report),
        "--no-color",
        env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.fuzz_hooks"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


def requests_made(report: Path) -> int:
    """Requests schemathesis sent, from its NDJSON report (one "response" per request made)."""
    return len(re.findall(r'"response":\s*\{', report.read_text()))


@pytest.mark.slow
async def test_every_api_holds_to_its_openapi_document(env: Env, tmp_path: Path) -> None:
    start_services(env)
    env.process("consumer", "order_history", "consumer").start()
    await wait_ready(env)
    config = env.stack.config
    # The command APIs first: their writes give the order-history API data to show.
    for service, port in (
        ("order", config.order_port),
        ("goods", config.goods_port),
        ("order_history", config.history_port),
    ):
        if service == "order_history":
            await env.wait_outbox_drained()
            await env.wait_caught_up()
        # Runs with one seed after another until the API has had MIN_REQUESTS requests:
        # schemathesis stops early on operations with few distinct inputs.
        made = 0
        seed = 20261202
        while True:
            report = tmp_path / f"{service}-{seed}.ndjson"
            code, output = await fuzz(port, report, seed)
            (Path(os.environ.get("FUZZ_LOG_DIR", tmp_path)) / f"{service}-{seed}.txt").write_text(output)
            assert code == 0, f"schemathesis found failures in the {service} API (seed {seed}):\n{output[-8000:]}"
            made += requests_made(report)
            if made >= MIN_REQUESTS:
                break
            seed += 1
        print(f"{service}: {made} requests, seeds 20261202..{seed}")
