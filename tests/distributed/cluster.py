"""A real distributed deployment in a test: API in-process, `atelier worker` processes, real servers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from atelier.app import create_app
from atelier.core.migrate import upgrade
from atelier.settings import Settings
from tests.conftest import PLUGIN, Api, scripted_registry

ROOT = Path(__file__).resolve().parents[2]


class Cluster:
    """Settings shared by the API and its worker processes; start/kill workers; an Api client."""

    def __init__(self, tmp: Path, database_url: str, broker_url: str, prefix: str, **overrides: Any) -> None:
        self.tmp = tmp
        self.env_settings: dict[str, Any] = {
            "environment": "test",
            "data_dir": str(tmp / "data"),
            "database": {"url": database_url},
            "broker": {"url": broker_url, "queue_prefix": prefix, "visibility_timeout_seconds": 3600},
            "tasks": {
                "retry_backoff_seconds": 0.05,
                "retry_backoff_max_seconds": 0.2,
                "cancel_poll_seconds": 0.0,
                "lease_seconds": 3.0,
                "heartbeat_seconds": 0.5,
            },
            "reaper": {"interval_seconds": 0.5, "republish_after_seconds": 2.0},
            "providers": {"plugins": [PLUGIN]},
        }
        for key, value in overrides.items():
            self.env_settings[key] = {**self.env_settings.get(key, {}), **value} if isinstance(value, dict) else value
        self.settings = Settings(**self.env_settings)
        self.workers: list[subprocess.Popen[bytes]] = []
        self.logs: list[Any] = []
        self.api: Api | None = None
        upgrade(database_url)

    def env(self) -> dict[str, str]:
        """Environment variables carrying the same settings to a worker process."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATELIER_")}
        for key, value in self.env_settings.items():
            env[f"ATELIER_{key.upper()}"] = json.dumps(value) if isinstance(value, dict) else str(value)
        env["PYTHONPATH"] = str(ROOT)
        return env

    def start_worker(self, concurrency: int = 2, pool: str = "prefork", name: str | None = None) -> str:
        """Start an `atelier worker` process (own process group) and wait until it answers ping."""
        hostname = name or f"w{len(self.workers)}-{os.getpid()}@test"
        log = (self.tmp / f"{hostname.split('@')[0]}.log").open("wb")
        self.logs.append(log)
        cmd = [sys.executable, "-m", "atelier", "worker", "-c", str(concurrency), "--pool", pool, "-n", hostname]
        proc = subprocess.Popen(
            cmd, env=self.env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.workers.append(proc)
        self.wait_for_ping(hostname, proc)
        return hostname

    def wait_for_ping(self, hostname: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
        """`celery inspect ping` until the worker answers."""
        app = self.client_app().state.runtime.celery
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"worker {hostname} exited with {proc.returncode}")
            replies = app.control.ping(destination=[hostname], timeout=0.5) or []
            if any(hostname in reply for reply in replies):
                return
        raise AssertionError(f"worker {hostname} never answered ping")

    def kill_worker(self, index: int = 0) -> None:
        """SIGKILL a worker's whole process group (parent and pool children), as a crash would."""
        proc = self.workers[index]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def client_app(self) -> Any:
        """The in-process API app (started on first use)."""
        return self.client().client.app

    def client(self) -> Api:
        """An Api client of the in-process API."""
        if self.api is None:
            client = TestClient(create_app(self.settings, providers=scripted_registry()))
            client.__enter__()
            self.api = Api(client, self.settings)
        return self.api

    def close(self) -> None:
        """Stop workers (TERM, then KILL) and the API."""
        for proc in self.workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        for log in self.logs:
            log.close()
        if self.api is not None:
            self.api.close()
