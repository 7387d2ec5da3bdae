"""Throwaway PostgreSQL, Redis and RabbitMQ servers for the chaos tests, plus load and bookkeeping helpers.

Every server here is started by the test on a free port, listens on 127.0.0.1 only and keeps its data in a
temporary folder removed afterwards, so a test may kill, restart or wipe it at will; the machine's shared services
(PostgreSQL 5432, Redis 6379, RabbitMQ 5672, epmd 4369), which other tests use, are never touched. A missing binary
skips the tests with the reason, except under ``CI=true``, where it fails them (as the other integration tests do).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import psycopg
import pytest
import redis
from kombu import Connection

from tests.distributed.cluster import Cluster
from tests.fakes.server import free_port

# Where packages put server binaries that are not on PATH (Debian's PostgreSQL and RabbitMQ).
EXTRA_BIN = ["/usr/local/bin", *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True), "/usr/lib/rabbitmq/bin"]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}


def missing(what: str) -> NoReturn:
    """Fail under CI=true (the servers must be there), skip with the reason elsewhere."""
    message = f"{what}; the chaos tests start their own throwaway servers from it"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def binary(name: str) -> str:
    """The path of a server binary (PATH, then the package folders), or skip/fail when it is not installed."""
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(EXTRA_BIN))
    if found is None:
        missing(f"`{name}` is not installed")
    return found


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll ``check`` until it holds; fail after ``timeout`` seconds or when ``proc`` exited."""
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(0.05)


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def stop_process(proc: subprocess.Popen[bytes] | None, sig: signal.Signals, timeout: float = 30.0) -> None:
    """Send ``sig`` to a process group we started (own session), SIGKILL it if it outlives ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


# ---------------------------------------------------------------------------------------------------- servers


class RedisServer:
    """``redis-server`` with nothing persisted: a restart comes back empty (the broker lost every queue)."""

    def __init__(self, folder: Path) -> None:
        self.binary = binary("redis-server")
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Broker URL."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it and wait until it answers PING."""
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with (self.folder / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [*args, "--dir", str(self.folder)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_until(self._answers, 15, f"redis-server on port {self.port}", self.proc)

    def _answers(self) -> bool:
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: the queues, unacked messages and everything else are gone."""
        stop_process(self.proc, signal.SIGKILL)


class PostgresServer:
    """A PostgreSQL cluster of its own (``initdb`` + ``pg_ctl``); as root it runs as the ``postgres`` user."""

    def __init__(self) -> None:
        self.initdb = binary("initdb")
        self.pg_ctl = binary("pg_ctl")
        self.runas: list[str] = []
        owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                missing("running as root and there is no `postgres` user to run initdb/pg_ctl as")
            self.runas = [binary("runuser"), "-u", "postgres", "--"]
        # Not under pytest's tmp_path: as root that is a 0700 folder the postgres user cannot enter.
        self.root = Path(tempfile.mkdtemp(prefix="atelier-chaos-pg-"))
        if owner is not None:
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self.data = self.root / "data"
        self.port = free_port()
        self.running = False
        self._pg(self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-N", "-E", "UTF8", "--no-locale")

    def _pg(self, *args: str, timeout: float = 90.0) -> None:
        result = subprocess.run([*self.runas, *args], capture_output=True, timeout=timeout, check=False)
        if result.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise AssertionError(f"{' '.join(args[:1] + args[-1:])} failed: {result.stderr.decode()}\n{tail}")

    @property
    def admin_url(self) -> str:
        """libpq URL of the ``postgres`` database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        """Start and wait until it accepts connections (fsync off: nothing here must survive a power cut)."""
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=300 "
            "-c fsync=off -c full_page_writes=off"
        )
        self._pg(
            self.pg_ctl,
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            options,
            "start",
        )
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop``; ``immediate`` is a crash (every backend dies at once, recovery at the next start)."""
        self._pg(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        self.running = False

    @contextmanager
    def database(self) -> Iterator[str]:
        """A fresh database, dropped afterwards; yields its SQLAlchemy URL."""
        name = f"chaos_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"
        finally:
            if not self.running:
                self.start()
            with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        """Stop it and remove its folder."""
        try:
            if self.running:
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def rabbitmq_script() -> str:
    """The real ``rabbitmq-server`` script (Debian's /usr/sbin one is a wrapper that switches user and logs to /var)."""
    for candidate in [
        "/usr/lib/rabbitmq/bin/rabbitmq-server",
        *glob.glob("/usr/lib/rabbitmq/lib/*/sbin/rabbitmq-server"),
    ]:
        if os.access(candidate, os.X_OK):
            return candidate
    found = binary("rabbitmq-server")
    if "su rabbitmq" in Path(found).read_text(errors="replace"):
        missing(f"{found} is a wrapper that runs the system node; the real rabbitmq-server script was not found")
    return found


class RabbitServer:
    """A RabbitMQ node of its own: own node name, AMQP/distribution/epmd ports, config, data and log folders.

    ``HOME`` points at its folder (its own Erlang cookie), ``ERL_EPMD_PORT`` makes it start and use a private epmd,
    and no plugin is enabled. Stopping it kills the node; ``close`` also stops the private epmd.
    """

    def __init__(self, folder: Path) -> None:
        self.script = rabbitmq_script()
        self.epmd = binary("epmd")
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port, self.dist_port, self.epmd_port = free_port(), free_port(), free_port()
        (folder / "rabbitmq-env.conf").write_text("")
        (folder / "enabled_plugins").write_text("[].\n")
        (folder / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\ndisk_free_limit.absolute = 1MB\n"
        )
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))},
            "HOME": str(folder),
            "RABBITMQ_CONF_ENV_FILE": str(folder / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(folder / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(folder / "plugins-expand"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(folder / "feature_flags"),
            "RABBITMQ_NODENAME": f"chaos{self.port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(folder / "log"),
            "RABBITMQ_PID_FILE": str(folder / "rabbitmq.pid"),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Broker URL."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self, timeout: float = 90.0) -> None:
        """Boot the node and wait until AMQP connections work."""
        with (self.folder / "stdout.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [self.script],
                env=self.env,
                cwd=self.folder,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        wait_until(self._answers, timeout, f"RabbitMQ node on port {self.port}", self.proc)

    def _answers(self) -> bool:
        if not port_open(self.port):
            return False
        try:
            with Connection(self.url, connect_timeout=2) as conn:
                conn.ensure_connection(max_retries=1)
            return True
        except Exception:  # still booting
            return False

    def kill(self) -> None:
        """SIGKILL the node (a crash: the durable queues and persistent messages are on disk)."""
        stop_process(self.proc, signal.SIGKILL)

    def close(self) -> None:
        """Stop the node and its private epmd."""
        stop_process(self.proc, signal.SIGTERM)
        env = {**os.environ, "ERL_EPMD_PORT": str(self.epmd_port)}
        subprocess.run([self.epmd, "-kill"], env=env, capture_output=True, timeout=10, check=False)


# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL cluster for the session (``initdb`` takes seconds); tests may restart it."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh database on the throwaway PostgreSQL."""
    if not pg_server.running:
        pg_server.start()
    with pg_server.database() as url:
        yield url


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A throwaway Redis for this test."""
    server = RedisServer(tmp_path / "redis")
    try:
        server.start()
        yield server
    finally:
        server.kill()


@pytest.fixture
def rabbit_server(tmp_path: Path) -> Iterator[RabbitServer]:
    """A throwaway RabbitMQ node for this test."""
    server = RabbitServer(tmp_path / "rabbitmq")
    try:
        server.start()
        yield server
    finally:
        server.close()


ChaosCluster = Callable[..., Cluster]


@pytest.fixture
def chaos_cluster(tmp_path: Path, pg_url: str) -> Iterator[ChaosCluster]:
    """``make(broker_url, **settings overrides)``: a Cluster on the throwaway PostgreSQL and the given broker."""
    clusters: list[Cluster] = []

    def make(broker_url: str, **overrides: Any) -> Cluster:
        clusters.append(Cluster(tmp_path, pg_url, broker_url, "chaos.", **overrides))
        return clusters[-1]

    yield make
    for cluster in clusters:
        cluster.close()


# ---------------------------------------------------------------------------------------------------- load


def generation(slow_seconds: float = 0.2, **extra: Any) -> dict[str, Any]:
    """A short GENERATION task of the scripted provider: busy ``slow_seconds``, then it writes its outputs."""
    config = {"script": ["slow"], "slow_seconds": slow_seconds}
    return {"task_type": "GENERATION", "prompt": "a red dress", "width": 16, "height": 16, "config": config, **extra}


@dataclass
class Load:
    """Submits a task every ``interval`` seconds from a background thread; remembers what was accepted.

    ``submit`` returns the HTTP status and, on 200, the task id. Anything but 200 or 503 ("nothing was done,
    retry") is recorded in ``errors``, as is an exception (the TestClient re-raises a server error).
    """

    submit: Callable[[], tuple[int, str | None]]
    interval: float = 0.1
    accepted: list[str] = field(default_factory=list)
    refused: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Load:
        self._thread = threading.Thread(target=self._run, name="chaos-load", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, task_id = self.submit()
            except Exception as exc:  # a 500 surfaces here through the TestClient
                self.errors.append(f"{type(exc).__name__}: {exc}")
            else:
                if status == 200 and task_id:
                    self.accepted.append(task_id)
                elif status == 503:
                    self.refused[status] += 1
                else:
                    self.errors.append(f"HTTP {status}")
            self._stop.wait(self.interval)


def db_url(sqlalchemy_url: str) -> str:
    """The libpq form of a ``postgresql+psycopg://`` URL."""
    return sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://", 1)


def task_rows(pg_url: str) -> dict[str, tuple[str, str | None]]:
    """Every task in the database: id → (status, error_category). The database is the source of truth."""
    with psycopg.connect(db_url(pg_url), connect_timeout=5) as conn:
        rows = conn.execute("SELECT id::text, status, error_category FROM tasks").fetchall()
    return {task_id: (status, category) for task_id, status, category in rows}


def completions(pg_url: str) -> Counter[str]:
    """How many times each task was recorded COMPLETED (its TASK_STATUS → COMPLETED events)."""
    with psycopg.connect(db_url(pg_url), connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT task_id::text, count(*) FROM task_events "
            "WHERE event_type = 'TASK_STATUS' AND status = 'COMPLETED' GROUP BY task_id"
        ).fetchall()
    return Counter({task_id: int(count) for task_id, count in rows})


def side_effects(cluster: Cluster, task_id: str, tenant: str = "acme") -> int:
    """Completed runs of the scripted provider for a task: the markers it left in storage (any process)."""
    folder = cluster.settings.storage_root / "tenants" / tenant / "side-effects" / task_id
    return sum(1 for path in folder.iterdir() if path.is_file()) if folder.is_dir() else 0


def wait_terminal(pg_url: str, ids: list[str], timeout: float) -> dict[str, tuple[str, str | None]]:
    """Wait until every task in ``ids`` is terminal; returns their rows (fails naming the stragglers)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = task_rows(pg_url)
        open_ = {i: rows.get(i) for i in ids if rows.get(i, ("MISSING", None))[0] not in TERMINAL}
        if not open_:
            return {i: rows[i] for i in ids}
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(open_)} of {len(ids)} tasks not terminal after {timeout:g} s: {open_}")
        time.sleep(0.2)


def assert_exactly_once(cluster: Cluster, pg_url: str, ids: list[str], timeout: float = 90.0) -> None:
    """Every accepted task is in the database, COMPLETED, recorded completed once, with one provider side effect."""
    assert len(set(ids)) == len(ids), "an id was accepted twice"
    rows = wait_terminal(pg_url, ids, timeout)
    done = completions(pg_url)
    not_completed = {i: row for i, row in rows.items() if row[0] != "COMPLETED"}
    assert not not_completed, f"tasks that did not complete: {not_completed}"
    twice = {i: done[i] for i in ids if done[i] != 1}
    assert not twice, f"tasks recorded COMPLETED other than once: {twice}"
    effects = {i: n for i in ids if (n := side_effects(cluster, i)) != 1}
    assert not effects, f"tasks whose provider side effect happened other than once: {effects}"
