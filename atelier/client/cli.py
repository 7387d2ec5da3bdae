"""Client commands of the ``atelier`` CLI: submit and follow tasks, workflows, trainings, files, queues, workers.

They talk to a running API over HTTP with ``atelier.client.Client`` (``--url``/``--token`` or ``ATELIER_URL``/
``ATELIER_TOKEN``). Every command takes ``--json`` for scripts. Exit codes: 0 ok, 1 the task (workflow, training)
ended FAILED or CANCELLED, 2 usage error, 3 API or connection error, 4 a wait timed out.
"""

from __future__ import annotations

import base64
import importlib
import json
import mimetypes
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from atelier.client import _base
from atelier.client._sync import Client
from atelier.client.errors import APIConnectionError, APIStatusError, TimeoutError
from atelier.client.models import Task, TaskStatus, TrainingTask, WaitProgress, Workflow, WorkflowStatus

EXIT_OK = 0
EXIT_FAILED = 1  # the task, workflow or training ended FAILED or CANCELLED
EXIT_USAGE = 2  # bad arguments (also Click's own code for usage errors)
EXIT_API_ERROR = 3  # the API answered an error, or could not be reached
EXIT_TIMEOUT = 4  # --timeout passed before the work finished (it goes on running)

UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url", envvar=_base.URL_ENV, help=f"API base URL [env {_base.URL_ENV}; default {_base.DEFAULT_URL}]"
    ),
]
TokenOpt = Annotated[
    str | None, typer.Option("--token", envvar=_base.TOKEN_ENV, help=f"Bearer token [env {_base.TOKEN_ENV}]")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables (for scripts)")]
TimeoutOpt = Annotated[float | None, typer.Option(help="Give up waiting after this many seconds (exit code 4)")]
ParamOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--param",
        "-p",
        help="KEY=VALUE field of the request (repeatable). VALUE is parsed as JSON when it is JSON (numbers, true, "
        "lists…), else kept as text; @FILE sends a local file as a data URL; dotted keys nest (config.max_retries=2).",
    ),
]

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

workflow_app = typer.Typer(help="Run and follow workflows (DAGs of tasks).", no_args_is_help=True)
storage_app = typer.Typer(help="Your tenant's files: ls, get, put, rm.", no_args_is_help=True)
lora_app = typer.Typer(help="LoRA model files.", no_args_is_help=True)


# --------------------------------------------------------------------------------------------- helpers


def _client(url: str | None, token: str | None) -> Client:
    return Client(url, token)


def _emit_json(value: Any) -> None:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    elif isinstance(value, list):
        value = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    typer.echo(json.dumps(value, indent=2, default=str))


@contextmanager
def handled(json_out: bool) -> Iterator[None]:
    """Turn SDK errors into a message on stderr and the documented exit code."""
    try:
        yield
    except TimeoutError as exc:
        _fail(str(exc), EXIT_TIMEOUT, json_out, {"error": "timeout"})
    except APIStatusError as exc:
        extra = {"error": "api", "status_code": exc.status_code, "code": exc.code, "request_id": exc.request_id}
        _fail(str(exc) if not json_out else exc.message, EXIT_API_ERROR, json_out, extra)
    except APIConnectionError as exc:
        _fail(str(exc), EXIT_API_ERROR, json_out, {"error": "connection"})


def _fail(message: str, code: int, json_out: bool, extra: dict[str, Any]) -> None:
    if json_out:
        typer.echo(json.dumps({**extra, "message": message}), err=True)
    else:
        err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def _file_value(path: Path) -> str:
    """A local file as a data URL (what image fields accept)."""
    if not path.is_file():
        raise typer.BadParameter(f"no such file: {path}", param_hint="--param")
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def _value(raw: str) -> Any:
    if raw.startswith("@"):
        return _file_value(Path(raw[1:]).expanduser())
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def parse_params(pairs: Sequence[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as a (nested, for dotted keys) request body."""
    fields: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--param")
        *parents, leaf = key.strip().split(".")
        target = fields
        for part in parents:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise typer.BadParameter(f"{key}: {part} is not an object", param_hint="--param")
        target[leaf] = _value(raw)
    return fields


def _task_table(task: Task) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    rows: list[tuple[str, Any]] = [
        ("id", task.id),
        ("type", task.task_type),
        ("status", _styled(str(task.status))),
        ("progress", f"{task.progress:.0f}%"),
        ("queue position", task.queue_position),
        ("eta", f"{task.eta_seconds:.1f} s" if task.eta_seconds is not None else None),
        ("provider", task.provider_type),
        ("created", task.created_at),
        ("started", task.started_at),
        ("completed", task.completed_at),
        ("error", task.error_category),
        ("errors", "; ".join(task.errors or []) or None),
        ("outputs", "\n".join(task.outputs) or None),
        ("result text", task.result_text),
    ]
    for name, value in rows:
        if value is not None:
            table.add_row(f"[bold]{name}[/bold]", str(value))
    return table


_STYLES = {"COMPLETED": "green", "FAILED": "red", "CANCELLED": "yellow", "EXECUTING": "cyan", "RUNNING": "cyan"}


def _styled(status: str) -> str:
    style = _STYLES.get(status)
    return f"[{style}]{status}[/{style}]" if style else status


def _describe(progress: WaitProgress) -> str:
    text = _styled(str(progress.status))
    if progress.queue_position is not None:
        text += f" · queue position {progress.queue_position}"
    if progress.eta_seconds is not None and progress.status == TaskStatus.PENDING:
        text += f" · eta {progress.eta_seconds:.0f} s"
    return text


def _wait_task(client: Client, task: Task, timeout: float | None, json_out: bool) -> Task:
    """Wait for the task, with a live progress bar on stderr unless ``json_out``."""
    if json_out:
        return client.tasks.wait(task.id, timeout=timeout)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TaskProgressColumn())
    with Progress(*columns, TimeElapsedColumn(), console=err, transient=True) as bar:
        row = bar.add_task(f"{task.task_type} {task.id}", total=100)

        def show(progress: WaitProgress) -> None:
            bar.update(row, completed=progress.progress, description=_describe(progress))

        return client.tasks.wait(task.id, timeout=timeout, on_progress=show)


def _download_outputs(client: Client, task: Task, destination: Path) -> list[Path]:
    outputs = task.outputs
    if len(outputs) > 1 or destination.is_dir() or str(destination).endswith("/"):
        destination.mkdir(parents=True, exist_ok=True)
    return [client.storage.download_to(path, destination) for path in outputs]


def _finish_task(client: Client, task: Task, json_out: bool, download: Path | None = None) -> None:
    saved = _download_outputs(client, task, download) if download and task.status == TaskStatus.COMPLETED else []
    if json_out:
        payload = task.model_dump(mode="json")
        if saved:
            payload["downloaded"] = [str(p) for p in saved]
        _emit_json(payload)
    else:
        out.print(_task_table(task))
        for path in saved:
            out.print(f"saved {path}")
    if task.status in (TaskStatus.FAILED, TaskStatus.CANCELLED):
        raise typer.Exit(EXIT_FAILED)


# --------------------------------------------------------------------------------------------- task commands


def submit(
    task_type: Annotated[str, typer.Argument(help="Task type, e.g. IMAGE_ADJUSTER, GENERATION, BACKGROUND_REMOVAL")],
    param: ParamOpt = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the task and show its progress")] = False,
    timeout: TimeoutOpt = None,
    download: Annotated[
        Path | None, typer.Option(help="With --wait: save the outputs here (a file, or a folder for several)")
    ] = None,
    priority: Annotated[int | None, typer.Option(help="Priority (-100..100, higher first)")] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Idempotency-Key (default: a fresh one, reused by retries)")
    ] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Submit a task; with --wait follow it to the end (exit 1 when it FAILED or was CANCELLED)."""
    fields = parse_params(param)
    if priority is not None:
        fields["priority"] = priority
    with handled(json_out), _client(url, token) as client:
        task = client.tasks.create(task_type, idempotency_key=idempotency_key, **fields)
        if not wait:
            if json_out:
                _emit_json(task)
            else:
                out.print(f"submitted {task.id} ({task.status})")
            return
        _finish_task(client, _wait_task(client, task, timeout, json_out), json_out, download)


def status(
    task_id: Annotated[str, typer.Argument(help="Task id")],
    url: UrlOpt = None,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show a task: status, progress, queue position, errors, outputs."""
    with handled(json_out), _client(url, token) as client:
        task = client.tasks.get(task_id)
        if json_out:
            _emit_json(task)
        else:
            out.print(_task_table(task))


def wait_command(
    task_id: Annotated[str, typer.Argument(help="Task id")],
    timeout: TimeoutOpt = None,
    download: Annotated[Path | None, typer.Option(help="Save the outputs here once COMPLETED")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Wait for a task to finish, with a live progress bar (exit 1 when FAILED/CANCELLED, 4 on timeout)."""
    with handled(json_out), _client(url, token) as client:
        task = client.tasks.get(task_id)
        _finish_task(client, _wait_task(client, task, timeout, json_out), json_out, download)


def list_command(
    status_filter: Annotated[str | None, typer.Option("--status", help="Only this status")] = None,
    task_type: Annotated[str | None, typer.Option("--type", help="Only this task type")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many (newest first)")] = 20,
    url: UrlOpt = None,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List your tasks, newest first."""
    with handled(json_out), _client(url, token) as client:
        tasks = []
        for task in client.tasks.iter(page_size=min(limit, 1000), status=status_filter, task_type=task_type):
            tasks.append(task)
            if len(tasks) >= limit:
                break
        if json_out:
            _emit_json(tasks)
            return
        table = Table("id", "type", "status", "progress", "created", "outputs")
        for task in tasks:
            created = task.created_at.strftime("%Y-%m-%d %H:%M:%S")
            table.add_row(
                str(task.id),
                str(task.task_type),
                _styled(str(task.status)),
                f"{task.progress:.0f}%",
                created,
                "\n".join(task.outputs),
            )
        out.print(table)


def cancel(
    task_id: Annotated[str, typer.Argument(help="Task id")],
    url: UrlOpt = None,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Cancel a task (PENDING at once, EXECUTING at the provider's next check)."""
    with handled(json_out), _client(url, token) as client:
        task = client.tasks.cancel(task_id)
        if json_out:
            _emit_json(task)
        else:
            note = " (cancel requested; it stops at the provider's next check)" if task.cancel_requested else ""
            out.print(f"{task.id} {_styled(str(task.status))}{note}")


def logs(
    task_id: Annotated[str, typer.Argument(help="Task id")],
    url: UrlOpt = None,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Print the task's recorded events (its event stream); follows a running task until it finishes."""
    with handled(json_out), _client(url, token) as client:
        for event in client.tasks.events(task_id):
            if json_out:
                typer.echo(event.model_dump_json())
                continue
            # Replayed status frames carry the task's progress *now*; only progress frames tell the past truthfully.
            live = event.event_type == "progress" and event.progress is not None
            progress = f" {event.progress:.0f}%" if live else ""
            message = f"  {event.message}" if event.message else ""
            stamp = event.created_at.strftime("%H:%M:%S.%f")[:-3]
            out.print(f"{stamp}  {event.event_type:<24} {event.status or '':<10}{progress}{message}")


# --------------------------------------------------------------------------------------------- workflows


def _load_definition(path: Path) -> dict[str, Any]:
    yaml = importlib.import_module("yaml")  # PyYAML ships no type hints
    try:
        definition = yaml.safe_load(path.read_text())  # JSON is YAML too
    except (OSError, yaml.YAMLError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}", param_hint="FILE") from exc
    if not isinstance(definition, dict):
        raise typer.BadParameter(f"{path} must hold one workflow object", param_hint="FILE")
    return definition


def _workflow_table(workflow: Workflow) -> Table:
    title = f"{workflow.name} · {_styled(str(workflow.status))} · {workflow.completed_steps}/{workflow.total_steps}"
    table = Table("step", "type", "depends on", "status", "task", title=title)
    for step in workflow.steps:
        table.add_row(
            step.step_id,
            str(step.task_type),
            ", ".join(step.dependencies),
            _styled(str(step.status)),
            str(step.task_id or ""),
        )
    return table


@workflow_app.command("run")
def workflow_run(
    file: Annotated[Path, typer.Argument(help="Workflow definition (YAML or JSON): name, origin_instance, steps")],
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the steps until the end")] = True,
    timeout: TimeoutOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Create and start a workflow; shows its steps live (exit 1 when it FAILED or was CANCELLED)."""
    definition = _load_definition(file)
    definition.setdefault("origin_instance", "atelier-cli")
    with handled(json_out), _client(url, token) as client:
        workflow = client.workflows.create(definition)
        if wait:
            if json_out:
                workflow = client.workflows.wait(workflow.id, timeout=timeout)
            else:
                with Live(_workflow_table(workflow), console=err, auto_refresh=False, transient=True) as live:
                    workflow = client.workflows.wait(
                        workflow.id,
                        timeout=timeout,
                        on_progress=lambda w: live.update(_workflow_table(w), refresh=True),
                    )
        if json_out:
            _emit_json(workflow)
        else:
            out.print(_workflow_table(workflow))
            if workflow.error_message:
                out.print(f"[red]{workflow.error_message}[/red]")
        if workflow.status in (WorkflowStatus.FAILED, WorkflowStatus.CANCELLED):
            raise typer.Exit(EXIT_FAILED)


@workflow_app.command("status")
def workflow_status(
    workflow_id: Annotated[str, typer.Argument(help="Workflow id")],
    url: UrlOpt = None,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show a workflow and its steps."""
    with handled(json_out), _client(url, token) as client:
        workflow = client.workflows.get(workflow_id)
        if json_out:
            _emit_json(workflow)
        else:
            out.print(_workflow_table(workflow))


# --------------------------------------------------------------------------------------------- training


def train(
    trigger_word: Annotated[str, typer.Argument(help="Trigger word of the LoRA")],
    param: ParamOpt = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the training until it ends")] = False,
    timeout: TimeoutOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Start a LoRA training (fields of TrainingTaskCreate as --param); --wait follows it."""
    fields = parse_params(param)
    with handled(json_out), _client(url, token) as client:
        training = client.training.create(trigger_word, **fields)
        if wait:
            training = _wait_training(client, training, timeout, json_out)
        if json_out:
            _emit_json(training)
        else:
            step = f" step {training.current_step}/{training.total_steps}" if training.total_steps else ""
            out.print(f"training {training.id} {_styled(training.status)} {training.progress:.0f}%{step}")
            if training.error_message:
                out.print(f"[red]{training.error_message}[/red]")
        if wait and training.status in ("FAILED", "CANCELLED"):
            raise typer.Exit(EXIT_FAILED)


def _wait_training(client: Client, training: TrainingTask, timeout: float | None, json_out: bool) -> TrainingTask:
    if json_out:
        return client.training.wait(training.id, timeout=timeout)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TaskProgressColumn())
    with Progress(*columns, TimeElapsedColumn(), console=err, transient=True) as bar:
        row = bar.add_task(f"training {training.id}", total=100)

        def show(current: TrainingTask) -> None:
            bar.update(row, completed=current.progress, description=_styled(current.status))

        return client.training.wait(training.id, timeout=timeout, on_progress=show)


# --------------------------------------------------------------------------------------------- storage, LoRA


@storage_app.command("ls")
def storage_ls(
    prefix: Annotated[str | None, typer.Argument(help="Only paths starting with this")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List your files (all pages)."""
    with handled(json_out), _client(url, token) as client:
        items = list(client.storage.iter(prefix, page_size=1000))
        if json_out:
            _emit_json(items)
            return
        table = Table("path", "size", "type", "modified")
        for item in items:
            table.add_row(item.path, str(item.size), item.content_type, item.last_modified)
        out.print(table)


@storage_app.command("get")
def storage_get(
    path: Annotated[str, typer.Argument(help="Storage path")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File or folder to write (default: its name here; - = stdout)")
    ] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Download a file."""
    with handled(json_out), _client(url, token) as client:
        if output is not None and str(output) == "-":
            sys.stdout.buffer.write(client.storage.download(path))
            sys.stdout.flush()
            return
        saved = client.storage.download_to(path, output or Path.cwd())
        if json_out:
            _emit_json({"path": path, "saved": str(saved), "size": saved.stat().st_size})
        else:
            out.print(f"saved {saved} ({saved.stat().st_size} bytes)")


@storage_app.command("put")
def storage_put(
    local: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Local file")],
    path: Annotated[str, typer.Argument(help="Storage path to write")],
    url: UrlOpt = None,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Upload a file (images only: the storage checks format, size and pixels)."""
    with handled(json_out), _client(url, token) as client:
        stored = client.storage.upload(path, local, content_type=mimetypes.guess_type(local.name)[0])
        if json_out:
            _emit_json(stored)
        else:
            out.print(f"stored {stored.path} ({stored.size} bytes)")


@storage_app.command("rm")
def storage_rm(
    path: Annotated[str, typer.Argument(help="Storage path")],
    url: UrlOpt = None,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Delete a file."""
    with handled(json_out), _client(url, token) as client:
        deleted = client.storage.delete(path)
        if json_out:
            _emit_json(deleted)
        else:
            out.print(f"deleted {deleted.path}")


@lora_app.command("upload")
def lora_upload(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="LoRA file (.safetensors, .ckpt, …)")],
    entity_type: Annotated[
        str | None, typer.Option(help="clothes, identities, product, styles (faces: --admin)")
    ] = None,
    admin: Annotated[bool, typer.Option(help="Use the admin upload (admin token)")] = False,
    safe_filename: Annotated[
        bool, typer.Option("--safe-filename/--no-safe-filename", help="Version a taken name instead of 409")
    ] = True,
    url: UrlOpt = None,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Upload a LoRA model file."""
    with handled(json_out), _client(url, token) as client, file.open("rb") as handle:
        stored = client.lora.upload(handle, entity_type=entity_type, use_safe_filename=safe_filename, admin=admin)
        if json_out:
            _emit_json(stored)
        else:
            out.print(f"stored {stored.partial_path} ({stored.file_size} bytes)")


# --------------------------------------------------------------------------------------------- monitoring


def queues(url: UrlOpt = None, token: TokenOpt = None, json_out: JsonOpt = False) -> None:
    """Queues: depth, workers, active and reserved tasks, mean wait."""
    with handled(json_out), _client(url, token) as client:
        stats = client.monitoring.queues()
        if json_out:
            _emit_json(stats)
            return
        table = Table("queue", "depth", "workers", "active", "reserved", "avg wait ms", "done last hour")
        for queue in stats.queues:
            wait_ms = f"{queue.avg_wait_time_ms:.0f}" if queue.avg_wait_time_ms is not None else "-"
            table.add_row(
                queue.name,
                str(queue.depth),
                str(queue.active_workers),
                str(queue.active_tasks),
                str(queue.reserved_tasks),
                wait_ms,
                str(queue.tasks_completed_last_hour),
            )
        out.print(table)


def workers(url: UrlOpt = None, token: TokenOpt = None, json_out: JsonOpt = False) -> None:
    """Workers: concurrency, load, memory, queues."""
    with handled(json_out), _client(url, token) as client:
        stats = client.monitoring.workers()
        if json_out:
            _emit_json(stats)
            return
        table = Table("worker", "concurrency", "active", "utilisation", "memory MB", "tasks/min", "queues")
        for worker in stats.workers:
            memory = f"{worker.memory_mb:.0f}" if worker.memory_mb is not None else "-"
            table.add_row(
                worker.name,
                str(worker.concurrency),
                str(worker.active_tasks),
                f"{worker.utilization_pct:.0f}%",
                memory,
                f"{worker.tasks_per_minute:.1f}",
                ", ".join(worker.queues),
            )
        out.print(table)


def register(cli: typer.Typer) -> None:
    """Add the client commands to the ``atelier`` app."""
    cli.command("submit")(submit)
    cli.command("status")(status)
    cli.command("wait")(wait_command)
    cli.command("list")(list_command)
    cli.command("cancel")(cancel)
    cli.command("logs")(logs)
    cli.command("train")(train)
    cli.command("queues")(queues)
    cli.command("workers")(workers)
    cli.add_typer(workflow_app, name="workflow")
    cli.add_typer(storage_app, name="storage")
    cli.add_typer(lora_app, name="lora")
