"""The client commands of ``atelier`` against a live API: Typer's CliRunner, and one run in a real terminal."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner, Result

from atelier.cli import cli
from atelier.client.cli import EXIT_API_ERROR, EXIT_FAILED, EXIT_TIMEOUT, EXIT_USAGE, parse_params
from tests.client.conftest import Live
from tests.conftest import png_bytes

runner = CliRunner()


@pytest.fixture
def env(live: Live) -> dict[str, str]:
    """``ATELIER_URL``/``ATELIER_TOKEN`` of a fresh tenant."""
    return {"ATELIER_URL": live.url, "ATELIER_TOKEN": live.token(), "COLUMNS": "200"}


def run(env: dict[str, str], *args: str) -> Result:
    """Invoke ``atelier ARGS``."""
    return runner.invoke(cli, list(args), env=env)


def run_json(env: dict[str, str], *args: str) -> Any:
    """Invoke with ``--json``, expect success, parse stdout."""
    result = run(env, *args, "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def photo(folder: Path) -> Path:
    """A 400×200 PNG on disk."""
    path = folder / "photo.png"
    path.write_bytes(png_bytes((400, 200)))
    return path


def test_parse_params() -> None:
    fields = parse_params(["a=1", "b=4:5", "c=true", 'd=["x"]', "config.max_retries=2", "config.x.y=z", "e="])
    assert fields == {"a": 1, "b": "4:5", "c": True, "d": ["x"], "config": {"max_retries": 2, "x": {"y": "z"}}, "e": ""}


def test_submit_wait_download(env: dict[str, str], tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    args = ["submit", "IMAGE_ADJUSTER", "-p", f"input_image=@{photo(tmp_path)}", "-p", "aspect_ratio=4:5"]
    task = run_json(env, *args, "-p", "mode=pad", "--wait", "--download", str(target))
    assert task["status"] == "COMPLETED" and task["downloaded"] == [str(target)]
    with Image.open(target) as image:
        assert image.size == (400, 500)
    shown = run(env, "status", task["id"])
    assert shown.exit_code == 0 and "COMPLETED" in shown.stdout and task["result_image_path"] in shown.stdout
    assert run_json(env, "status", task["id"])["id"] == task["id"]
    listed = run_json(env, "list", "--status", "COMPLETED", "--type", "IMAGE_ADJUSTER")
    assert [t["id"] for t in listed] == [task["id"]]
    assert run_json(env, "list", "--status", "FAILED") == []
    table = run(env, "list")
    assert table.exit_code == 0 and task["id"] in table.stdout


def test_exit_codes(env: dict[str, str]) -> None:
    failed = run(env, "submit", "GENERATION", "-p", "prompt=x", "-p", 'config={"script": ["fatal"]}', "--wait")
    assert failed.exit_code == EXIT_FAILED and "FAILED" in failed.stdout
    missing = run(env, "status", "00000000-0000-4000-8000-000000000000", "--json")
    assert missing.exit_code == EXIT_API_ERROR and json.loads(missing.stderr)["status_code"] == 404
    assert run(env, "submit", "GENERATION", "-p", "novalue").exit_code == EXIT_USAGE
    assert run(env, "submit", "GENERATION", "-p", "input=@/no/such/file").exit_code == EXIT_USAGE
    invalid = run(env, "submit", "GENERATION", "-p", "prompt=")
    assert invalid.exit_code == EXIT_API_ERROR and "prompt" in invalid.stderr
    slow = run_json(env, "submit", "GENERATION", "-p", "prompt=x", "-p", 'config={"script":["slow"],"slow_seconds":20}')
    timed_out = run(env, "wait", slow["id"], "--timeout", "0.3")
    assert timed_out.exit_code == EXIT_TIMEOUT and "did not finish" in timed_out.stderr
    cancelled = run(env, "cancel", slow["id"])
    assert cancelled.exit_code == 0 and slow["id"] in cancelled.stdout
    assert run(env, "wait", slow["id"], "--json").exit_code == EXIT_FAILED
    unreachable = {**env, "ATELIER_URL": "http://127.0.0.1:9"}  # a cancel is not repeated: no retry delays
    assert run(unreachable, "cancel", slow["id"]).exit_code == EXIT_API_ERROR


def test_logs_prints_the_event_stream(env: dict[str, str]) -> None:
    task = run_json(env, "submit", "GENERATION", "-p", "prompt=x", "-p", 'config={"script":["ok"]}', "--wait")
    lines = run(env, "logs", task["id"], "--json").stdout.splitlines()
    events = [json.loads(line) for line in lines]
    assert events[0]["event_type"] == "TASK_CREATED"
    assert [e["status"] for e in events if e["event_type"] == "TASK_STATUS"] == ["EXECUTING", "COMPLETED"]
    text = run(env, "logs", task["id"])
    assert text.exit_code == 0 and "TASK_CREATED" in text.stdout and "COMPLETED" in text.stdout


def test_storage_commands(env: dict[str, str], tmp_path: Path) -> None:
    local = photo(tmp_path)
    assert run_json(env, "storage", "put", str(local), "inputs/photo.png")["path"] == "inputs/photo.png"
    assert [o["path"] for o in run_json(env, "storage", "ls", "inputs/")] == ["inputs/photo.png"]
    saved = run_json(env, "storage", "get", "inputs/photo.png", "-o", str(tmp_path / "copy.png"))
    assert Path(saved["saved"]).read_bytes() == local.read_bytes()
    assert run_json(env, "storage", "rm", "inputs/photo.png")["deleted"] is True
    assert run(env, "storage", "rm", "inputs/photo.png").exit_code == EXIT_API_ERROR


def test_workflow_run(env: dict[str, str], tmp_path: Path) -> None:
    assert run(env, "storage", "put", str(photo(tmp_path)), "inputs/photo.png").exit_code == 0
    definition = tmp_path / "wf.yaml"
    definition.write_text(
        "name: packshot\n"
        "steps:\n"
        "  - {id: portrait, task_type: IMAGE_ADJUSTER, config: {input_image: inputs/photo.png, aspect_ratio: '4:5'}}\n"
        "  - id: square\n"
        "    task_type: IMAGE_ADJUSTER\n"
        "    config: {aspect_ratio: 1.0, mode: pad}\n"
        "    input_mappings: [{from_step: portrait, from_field: result_image_path, to_field: input_image}]\n"
    )
    workflow = run_json(env, "workflow", "run", str(definition))
    assert workflow["status"] == "COMPLETED" and [s["status"] for s in workflow["steps"]] == ["COMPLETED"] * 2
    shown = run(env, "workflow", "status", workflow["id"])
    assert shown.exit_code == 0 and "square" in shown.stdout and "COMPLETED" in shown.stdout
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"name": "x", "steps": [{"id": "a", "task_type": "NOPE"}]}))
    assert run(env, "workflow", "run", str(broken)).exit_code == EXIT_API_ERROR


def test_lora_queues_workers(env: dict[str, str], tmp_path: Path) -> None:
    lora = tmp_path / "my lora.bin"
    lora.write_bytes(b"\0" * 128)
    stored = run_json(env, "lora", "upload", str(lora), "--entity-type", "styles")
    assert stored["partial_path"] == "styles/my_lora.bin" and stored["file_size"] == 128
    assert "local" in {q["name"] for q in run_json(env, "queues")["queues"]}
    assert run_json(env, "workers")["total_workers"] >= 1
    assert "local" in run(env, "queues").stdout


def test_submit_wait_in_a_real_terminal(live: Live, tmp_path: Path) -> None:
    """``atelier submit … --wait`` as a user runs it: a subprocess on a pseudo-terminal (live progress, colours)."""
    atelier = Path(sys.executable).with_name("atelier")
    target = tmp_path / "result.png"
    command = [str(atelier), "submit", "IMAGE_ADJUSTER", "-p", f"input_image=@{photo(tmp_path)}", "-p"]
    command += ["aspect_ratio=4:5", "--wait", "--download", str(target)]
    env = {**os.environ, "ATELIER_URL": live.url, "ATELIER_TOKEN": live.token(), "TERM": "xterm", "COLUMNS": "120"}
    env.pop("NO_COLOR", None)
    primary, secondary = pty.openpty()
    process = subprocess.Popen(command, stdin=secondary, stdout=secondary, stderr=secondary, env=env, cwd=tmp_path)
    os.close(secondary)
    output = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 1.0)
        if not ready:
            if process.poll() is not None:
                break
            continue
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the terminal's other side is closed
            break
        if not chunk:
            break
        output += chunk
    os.close(primary)
    assert process.wait(timeout=30) == 0, output.decode(errors="replace")
    text = output.decode(errors="replace")
    assert "COMPLETED" in text and f"saved {target}" in text.replace("\r\n", "").replace("\n", "")
    assert "\x1b[" in text  # a terminal: Rich drew with escape sequences
    with Image.open(target) as image:
        assert image.size == (400, 500)
