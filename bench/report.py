"""Every benchmark in one run, as a Markdown table of ratios against baselines measured in the same run.

    .venv/bin/python -m bench.report                 # everything (about 25 minutes on 2 cores; 1 M monitoring rows)
    .venv/bin/python -m bench.report --quick         # smaller sizes, one round each (about 8 minutes)
    .venv/bin/python -m bench.report --only status,rss

Sections: status (task read vs bare FastAPI+ORM read), latency (submit→EXECUTING, embedded / Redis / RabbitMQ),
throughput (IMAGE_ADJUSTER 16×16 vs raw Celery no-op, Redis), monitoring (every call at 1 M tasks), local
(image ops vs the raw library), workflows (step overhead vs a client chaining the same tasks), rss (idle memory of
the API and a worker vs a bare uvicorn app and a bare Celery worker). The machine, the versions of the servers and
libraries and the commit are recorded beside the figures. The table goes to stdout and to
``bench/results/<time>-report.md`` (the raw numbers to ``…-report.json``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

from bench import local, monitoring, workflows
from bench.run import (
    PG_ADMIN,
    PY,
    RABBIT_URL,
    REDIS_URL,
    ROOT,
    _flush,
    atelier_env,
    bench_latency,
    bench_status,
    bench_throughput,
    database,
    free_port,
    noop_env,
    process,
    scratch,
    uvicorn_cmd,
    wait_http,
)

SECTIONS = ("status", "latency", "throughput", "monitoring", "local", "workflows", "rss")
PACKAGES = (
    "fastapi",
    "starlette",
    "uvicorn",
    "pydantic",
    "sqlalchemy",
    "psycopg",
    "celery",
    "kombu",
    "redis",
    "pillow",
    "onnxruntime",
    "torch",
    "diffusers",
)


# ------------------------------------------------------------------------------------------------ machine


def _first(path: str, key: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
        return out.stdout.strip() + (" (uncommitted changes)" if dirty.strip() else "")
    except OSError:
        return "?"


def _servers() -> dict[str, str]:
    found: dict[str, str] = {}
    try:
        with psycopg.connect(PG_ADMIN, connect_timeout=3) as conn:
            found["postgresql"] = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    except Exception as exc:  # reported, not fatal: the sections that need it will fail loudly
        found["postgresql"] = f"unavailable ({type(exc).__name__})"
    try:
        found["redis"] = str(redis.Redis.from_url(REDIS_URL).info("server")["redis_version"])
    except Exception as exc:
        found["redis"] = f"unavailable ({type(exc).__name__})"
    try:
        from kombu import Connection

        with Connection(RABBIT_URL, connect_timeout=3) as conn:
            conn.connect()
            properties = getattr(conn.connection, "server_properties", {}) or {}
            version = properties.get("version", b"?")
            found["rabbitmq"] = version.decode() if isinstance(version, bytes) else str(version)
    except Exception as exc:
        found["rabbitmq"] = f"unavailable ({type(exc).__name__})"
    return found


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    libraries = {}
    for name in PACKAGES:
        try:
            libraries[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            libraries[name] = "not installed"
    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "commit": _git_commit(),
        "cpu": _first("/proc/cpuinfo", "model name"),
        "cores": os.cpu_count(),
        "memory": _first("/proc/meminfo", "MemTotal"),
        "os": platform.platform(),
        "python": platform.python_version(),
        "servers": _servers(),
        "libraries": libraries,
    }


# ------------------------------------------------------------------------------------------------ idle RSS


def _rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants (prefork children count)."""
    total = 0
    pids = [pid]
    while pids:
        current = pids.pop()
        total += int(_first(f"/proc/{current}/status", "VmRSS").split()[0] or 0)
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            children = []
        pids += [int(c) for c in children]
    return total


def _settled_rss(proc: subprocess.Popen[bytes], seconds: float = 3.0) -> int:
    time.sleep(seconds)  # idle: imports done, pools warm, nothing running
    return _rss_kib(proc.pid)


def _wait_worker(app: Any, hostname: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(hostname in reply for reply in app.control.ping(destination=[hostname], timeout=0.5) or []):
            return
    raise RuntimeError(f"{hostname} never answered ping")


def bench_rss() -> dict[str, Any]:
    """Idle RSS: `atelier serve` (embedded, with its in-process worker) vs a bare uvicorn FastAPI+SQLAlchemy app;
    `atelier worker -c 2` (prefork, Redis + PostgreSQL) vs a bare Celery worker with the same pool and broker."""
    results: dict[str, Any] = {}
    with scratch() as d, database("sqlite", Path(d)) as db:
        tmp = Path(d)
        from atelier.core.migrate import upgrade

        upgrade(db)
        env = atelier_env(tmp, db)
        env["BENCH_DATABASE_URL"] = db
        port_a, port_b = free_port(), free_port()
        with process(uvicorn_cmd("atelier.app:create_app", port_a, factory=True), env, tmp / "api.log") as ours:
            wait_http(f"http://127.0.0.1:{port_a}/health")
            httpx.get(f"http://127.0.0.1:{port_a}/openapi.json")
            api_kib = _settled_rss(ours)
        with process(uvicorn_cmd("bench.baseline_app:app", port_b), env, tmp / "base.log") as base:
            wait_http(f"http://127.0.0.1:{port_b}/docs")
            httpx.get(f"http://127.0.0.1:{port_b}/openapi.json")
            base_kib = _settled_rss(base)
        results["api"] = {"atelier_mib": api_kib / 1024, "baseline_mib": base_kib / 1024, "ratio": api_kib / base_kib}
    with scratch() as d, database("postgres", Path(d)) as db:
        tmp = Path(d)
        from atelier.core.migrate import upgrade
        from atelier.core.runtime import build_runtime
        from atelier.settings import Settings

        upgrade(db)
        prefix = f"bench-rss-{uuid.uuid4().hex[:6]}."
        env = atelier_env(tmp, db, broker=REDIS_URL, prefix=prefix)
        ours_name, base_name = f"atelier-rss-{os.getpid()}@bench", f"noop-rss-{os.getpid()}@bench"
        worker = [PY, "-m", "atelier", "worker", "-c", "2", "-n", ours_name, "--loglevel", "WARNING"]
        os.environ.update({k: v for k, v in env.items() if k.startswith("ATELIER_")})
        runtime = build_runtime(Settings())
        with process(worker, env, tmp / "worker.log") as ours:
            _wait_worker(runtime.celery, ours_name)
            worker_kib = _settled_rss(ours)
        runtime.close()
        from atelier.engine.worker import worker_argv
        from atelier.providers.registry import ALL_QUEUES

        baseline_env, settings = noop_env(prefix)
        noop_cmd = [PY, "-m", "celery", "-A", "bench.noop_app"]
        # the same arguments as `atelier worker -c 2`
        noop_cmd += worker_argv(settings, list(ALL_QUEUES), 2, "prefork", "WARNING", base_name)
        with process(noop_cmd, baseline_env, tmp / "noop.log") as base:
            from celery import Celery

            probe = Celery("probe", broker=REDIS_URL)
            probe.conf.update(json.loads(baseline_env["BENCH_CELERY_CONF"]))  # the same key names and separators
            _wait_worker(probe, base_name)
            noop_kib = _settled_rss(base)
        _flush(prefix)
        results["worker"] = {
            "atelier_mib": worker_kib / 1024,
            "baseline_mib": noop_kib / 1024,
            "ratio": worker_kib / noop_kib,
        }
    return results


# ------------------------------------------------------------------------------------------------ table


def _row(name: str, ours: str, baseline: str, ratio: float | None, goal: str) -> str:
    return f"| {name} | {ours} | {baseline} | {'' if ratio is None else f'{ratio:.2f}×'} | {goal} |"


def _rows(section: str, data: Any) -> list[str]:
    rows: list[str] = []
    if section == "status":
        for item in data:
            rows.append(
                _row(
                    f"task status read, {item['db']}",
                    f"{item['atelier_rps']:.0f} req/s",
                    f"{item['baseline_rps']:.0f} req/s (bare FastAPI+ORM)",
                    item["ratio"],
                    "≥ 0.6×",
                )
            )
    elif section == "latency":
        for item in data:
            rows.append(
                _row(
                    f"submit → EXECUTING, {item['mode']}",
                    f"p50 {item['p50_ms']:.1f} ms, p99 {item['p99_ms']:.1f} ms",
                    "—",
                    None,
                    item["goal"].replace("<=", "≤"),
                )
            )
    elif section == "throughput":
        rows.append(
            _row(
                "IMAGE_ADJUSTER 16×16 throughput, Redis",
                f"{data['atelier_tasks_per_s']:.0f} tasks/s",
                f"{data['noop_tasks_per_s']:.0f} tasks/s (raw Celery no-op)",
                data["ratio"],
                "≥ 0.4×",
            )
        )
    elif section == "monitoring":
        worst = max(data["results"].items(), key=lambda kv: kv[1].get("p99_ms", 0) if isinstance(kv[1], dict) else 0)
        p99s = [v["p99_ms"] for v in data["results"].values() if isinstance(v, dict) and "p99_ms" in v]
        rows.append(
            _row(
                f"monitoring, {data['tasks']:,} tasks / {data['workflows']:,} workflows",
                f"every call p99 ≤ {max(p99s):.0f} ms (slowest: {worst[0]}); "
                f"median p99 {statistics.median(p99s):.0f} ms",
                "—",
                None,
                "p99 ≤ 100 ms",
            )
        )
    elif section == "local":
        rows.append(
            _row(
                "IMAGE_ADJUSTER 4096² JPEG → 1024²",
                f"{data['adjuster']['ours_ms']:.1f} ms",
                f"{data['adjuster']['raw_pillow_ms']:.1f} ms (raw Pillow)",
                data["adjuster"]["ratio"],
                "≤ 1.2×",
            )
        )
        rows.append(
            _row(
                "background removal u2netp 512²",
                f"{data['rembg']['ours_ms']:.0f} ms",
                f"{data['rembg']['rembg_direct_ms']:.0f} ms (rembg directly)",
                data["rembg"]["ratio"],
                "≤ 1.1×",
            )
        )
    elif section == "workflows":
        rows.append(
            _row(
                f"workflow of {data['steps']} chained steps, {data['mode']}",
                f"{data['workflow_seconds'] * 1000:.0f} ms ({data['overhead_ms_per_step']:+.1f} ms per step)",
                f"{data['client_chain_seconds'] * 1000:.0f} ms (client chaining the same tasks)",
                data["workflow_vs_client"],
                "overhead ≤ 20 ms per step",
            )
        )
    elif section == "rss":
        rows.append(
            _row(
                "idle RSS, API (`atelier serve`, embedded worker included)",
                f"{data['api']['atelier_mib']:.0f} MiB",
                f"{data['api']['baseline_mib']:.0f} MiB (bare uvicorn app)",
                data["api"]["ratio"],
                "report",
            )
        )
        rows.append(
            _row(
                "idle RSS, worker (`atelier worker -c 2`, prefork)",
                f"{data['worker']['atelier_mib']:.0f} MiB",
                f"{data['worker']['baseline_mib']:.0f} MiB (bare Celery worker)",
                data["worker"]["ratio"],
                "report",
            )
        )
    return rows


def markdown(info: dict[str, Any], results: dict[str, Any], errors: dict[str, str]) -> str:
    """The report: machine, then one table row per figure."""
    servers = ", ".join(f"{k} {v}" for k, v in info["servers"].items())
    libraries = ", ".join(f"{k} {v}" for k, v in info["libraries"].items())
    lines = [
        f"## Benchmarks — {info['date_utc']} UTC, commit {info['commit']}",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory']} RAM; {info['os']}; Python {info['python']}.",
        f"Servers: {servers}.",
        f"Libraries: {libraries}.",
        "",
        "| benchmark | Atelier | baseline (same run) | ratio | goal |",
        "|---|---|---|---|---|",
    ]
    for section in SECTIONS:
        if section in results:
            lines += _rows(section, results[section])
    for section, error in errors.items():
        lines.append(f"| {section} | failed: {error} | | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="smaller sizes and one round each (a smoke run)")
    args = parser.parse_args()
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections: {', '.join(unknown)}")
    quick = args.quick
    rounds = 1 if quick else 3
    runs: dict[str, Callable[[], Any]] = {
        "status": lambda: [bench_status(kind, 4 if quick else 8, rounds) for kind in ("sqlite", "postgres")],
        "latency": lambda: [bench_latency(mode, 50 if quick else 200) for mode in ("embedded", "redis", "rabbitmq")],
        # the sizes of `bench.run throughput --tasks 2000 --rounds 5`, the closing notes' command
        "throughput": lambda: bench_throughput(400 if quick else 2000, 2, 1 if quick else 5),
        "monitoring": lambda: monitoring.bench_monitoring(
            50_000 if quick else 1_000_000, 5_000 if quick else 100_000, 10 if quick else 40, 1 if quick else 3
        ),
        "local": lambda: {
            "adjuster": local.bench_adjuster(3 if quick else 7),
            "rembg": local.bench_rembg(3 if quick else 7),
        },
        "workflows": lambda: workflows.bench("embedded", 10, rounds),
        "rss": bench_rss,
    }
    info = machine()
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for section in chosen:
        started = time.monotonic()
        try:
            results[section] = runs[section]()
        except Exception as exc:  # one broken section must not lose the others' figures
            errors[section] = f"{type(exc).__name__}: {exc}"
        print(f"[{section}: {time.monotonic() - started:.0f} s]", flush=True)
    report = markdown(info, results, errors)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"{stamp}-report.md").write_text(report)
    (out / f"{stamp}-report.json").write_text(
        json.dumps({"machine": info, "results": results, "errors": errors}, indent=2)
    )
    print(report)


if __name__ == "__main__":
    main()
