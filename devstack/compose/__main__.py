"""`python -m devstack.compose test|images [--profile P] [-- PYTEST ARGS]`: `make compose-test`.

See __init__.py.

`test` does everything: install, engine, images, then for the default stack and the cluster
profile `docker compose up --wait`, tests/blackbox/, `docker compose down -v`. `images` installs,
starts the engine and builds the images only (then stops the engine again).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from types import FrameType

from devstack.compose import images
from devstack.compose.engine import CACHE, Engine, compose_binary, install_system_packages, log
from devstack.errors import StackError
from devstack.processes import port_is_free
from devstack.progress import step
from devstack.stack import REPO

PROJECT = "order-history"
PUBLISHED_PORTS = (8080, 8081, 8082)  # docker-compose.yml's API ports on 127.0.0.1
PROFILES = {"default": [], "cluster": ["--env-file", str(REPO / "docker" / "cluster.env")]}
# The default stack runs every black-box test; the cluster profile the one that needs three Kafka
# nodes (kill the leader under load; it checks the APIs, the read model and the replica too).
PROFILE_TESTS = {"default": [], "cluster": ["-k", "kafka_node_killed"]}


def compose_command(engine: Engine, profile: str) -> list[str]:
    return [engine.docker, "compose", "-p", PROJECT, "-f", str(REPO / "docker-compose.yml"), *PROFILES[profile]]


def compose(engine: Engine, command: Sequence[str], *args: str, check: bool = True) -> int:
    """`docker compose ARGS`, its output shown as it comes."""
    done = subprocess.run([*command, *args], env=engine.env(), cwd=REPO, check=False)
    if check and done.returncode != 0:
        raise StackError(f"docker compose {' '.join(args)} failed (exit {done.returncode})")
    return done.returncode


def show_logs(engine: Engine, command: Sequence[str], profile: str) -> None:
    """After a failure: every container's state and the last lines of its log (all of it in a file)."""
    logs = CACHE / "logs" / f"compose-{profile}.log"
    with logs.open("w") as out:
        subprocess.run([*command, "logs", "--no-color", "--timestamps"], env=engine.env(), stdout=out, stderr=out)
    compose(engine, command, "ps", "-a", check=False)
    compose(engine, command, "logs", "--no-color", "--tail", "30", check=False)
    log(f"every container's log: {logs}")


def run_profile(engine: Engine, profile: str, pytest_args: Sequence[str]) -> None:
    command = compose_command(engine, profile)
    compose(engine, command, "down", "-v", "--remove-orphans")  # whatever an interrupted run left
    try:
        try:
            with step(f"docker compose up --wait ({profile})", prefix="compose"):
                compose(engine, command, "up", "-d", "--wait", "--no-build", "--pull", "never")
        except StackError:
            show_logs(engine, command, profile)
            raise
        compose(engine, command, "ps")
        with step(f"black-box tests against the compose stack ({profile})", prefix="compose"):
            tests = subprocess.Popen(
                [sys.executable, "-m", "pytest", "-ra", "--durations=10", "-p", "no:cacheprovider", "tests/blackbox"]
                + [*PROFILE_TESTS[profile], *pytest_args],
                env={**engine.env(), "BLACKBOX_COMPOSE": json.dumps(command)},
                cwd=REPO,
            )
            try:
                tests.wait()
            finally:
                if tests.poll() is None:  # interrupted: no tests left running against a stack going down
                    tests.terminate()
                    tests.wait()
        if tests.returncode != 0:
            show_logs(engine, command, profile)
            what = "collected no tests" if tests.returncode == 5 else f"failed (exit {tests.returncode})"
            raise StackError(f"the black-box tests against the compose stack ({profile}) {what}")
    finally:
        with step(f"docker compose down -v ({profile})", prefix="compose"):
            compose(engine, command, "down", "-v", "--remove-orphans", check=False)


def prepare(engine: Engine) -> None:
    """Install what is missing, start the engine, build every image; the compose CLI meanwhile."""
    install_system_packages()
    engine.lock()
    with ThreadPoolExecutor(max_workers=3) as pool:
        cli = pool.submit(compose_binary)
        libs = pool.submit(images.kafka_libs)
        wheels = pool.submit(images.wheels)
        engine.start()
        images.build_all(engine, (libs, wheels))
        with step("compose CLI", prefix="compose"):
            engine.install_compose_plugin(cli.result())
    engine.run("compose", "version")
    print(images.image_summary(engine), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.compose", description=__doc__)
    parser.add_argument("command", choices=["test", "images"])
    parser.add_argument("--profile", choices=[*PROFILES, "both"], default="both", help="which stacks to test")
    argv = sys.argv[1:] if argv is None else argv
    pytest_args = argv[argv.index("--") + 1 :] if "--" in argv else []  # `... test -- -k kill`: for pytest
    args = parser.parse_args(argv[: len(argv) - len(pytest_args) - (1 if "--" in argv else 0)])

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)  # through the `finally` below: the engine is stopped

    signal.signal(signal.SIGTERM, terminate)
    started = time.monotonic()
    engine = Engine()
    try:
        prepare(engine)
        if args.command == "test":
            if busy := [p for p in PUBLISHED_PORTS if not port_is_free(p)]:
                raise StackError(
                    f"127.0.0.1 ports {busy} are taken (the compose stack publishes its APIs there): "
                    "stop what uses them (`make down` for `make up`'s stack) and run again"
                )
            for profile in PROFILES if args.profile == "both" else [args.profile]:
                run_profile(engine, profile, pytest_args)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        engine.stop()
        log(f"{args.command}: {time.monotonic() - started:.0f}s in all")
    log("compose-test passed" if args.command == "test" else "images built")
    return 0


if __name__ == "__main__":
    sys.exit(main())
