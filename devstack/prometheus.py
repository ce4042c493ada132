"""A real Prometheus server scraping a stack, with `deploy/prometheus`'s scrape jobs and alert rules.

The configuration is `deploy/prometheus/prometheus.yml` with each job's targets
replaced by the ports this stack really uses (a job whose process serves no
metrics port is left out), so the file users deploy is the one tested.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from devstack.errors import StackError
from devstack.processes import ManagedProcess, port_is_free
from devstack.progress import step

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
CONFIG = DEPLOY / "prometheus.yml"


def binary(name: str = "prometheus") -> str:
    found = shutil.which(name)
    if found is None:
        raise StackError(
            f"{name} is not installed (Debian: apt-get install -y prometheus, or run make up PROMETHEUS=1)"
        )
    return found


def job_names() -> list[str]:
    return [job["job_name"] for job in _load()["scrape_configs"]]


def render(targets: Mapping[str, Sequence[str]], interval: str) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml for these targets (job name → host:port list)."""
    config = _load()
    unknown = set(targets) - {job["job_name"] for job in config["scrape_configs"]}
    if unknown:
        raise StackError(f"no scrape job named {sorted(unknown)} in {CONFIG}")
    config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = interval
    config["rule_files"] = [str(DEPLOY / name) for name in config["rule_files"]]
    config["scrape_configs"] = [
        {**job, "static_configs": [{"targets": list(targets[job["job_name"]])}]}
        for job in config["scrape_configs"]
        if targets.get(job["job_name"])
    ]
    return config


def _load() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    return loaded


@dataclass
class PrometheusServer:
    home: Path  # configuration, time series data, PID and log files
    port: int = 9090
    # Short enough for a test to see a write within seconds; the deployed file says 15s.
    interval: str = "15s"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.home / "prometheus.yml"

    @property
    def process(self) -> ManagedProcess:
        return ManagedProcess(
            name="prometheus",
            argv=[
                shutil.which("prometheus") or "prometheus",
                f"--storage.tsdb.path={self.home / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                f"--config.file={self.config_file}",
            ],
            pid_file=self.home / "prometheus.pid",
            log_file=self.home / "prometheus.log",
        )

    def running(self) -> bool:
        return self.process.running()

    def start(self, targets: Mapping[str, Sequence[str]], timeout: float = 60.0) -> None:
        binary()
        self.home.mkdir(parents=True, exist_ok=True)
        # JSON is YAML: no second serializer for the rendered file.
        self.config_file.write_text(json.dumps(render(targets, self.interval), indent=2) + "\n")
        process = self.process
        if process.running():
            self.reload()
            return
        if not port_is_free(self.port):
            raise StackError(f"prometheus: port {self.port} on 127.0.0.1 is taken; set PROMETHEUS_PORT")
        with step(f"starting Prometheus on {self.url}"):
            process.start()
            deadline = time.monotonic() + timeout
            while self._get("/-/ready") != 200:
                if process.exited_early():
                    raise StackError(f"prometheus exited; last lines of {process.log_file}:\n{process.tail()}")
                if time.monotonic() > deadline:
                    raise StackError(f"prometheus not ready after {timeout:.0f}s; see {process.log_file}")
                time.sleep(0.2)

    def reload(self) -> None:
        """Make a running server read its configuration again (SIGHUP)."""
        self.process.signal(signal.SIGHUP)

    def stop(self) -> None:
        self.process.stop()

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector (raises on an error answer)."""
        body = self._api("/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def api(self, path: str) -> Any:
        """GET of an HTTP API path (/api/v1/...): its `data` (an object or a list, by path)."""
        return self._api(path)["data"]

    def _api(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            body: dict[str, Any] = json.load(response)
        if body.get("status") != "success":
            raise StackError(f"prometheus {path}: {body}")
        return body

    def _get(self, path: str) -> int | None:
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, OSError):
            return None
