"""The ``atelier`` command line: serve, migrate, openapi, token, and the client commands (atelier.client.cli)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from atelier.client.cli import register as register_client_commands
from atelier.core.auth import Role, mint_token
from atelier.providers.registry import ALL_QUEUES
from atelier.settings import Settings

cli = typer.Typer(help="Atelier Compute: a self-hostable job service for generative-image work.", no_args_is_help=True)


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default: ATELIER_SERVER__HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: ATELIER_SERVER__PORT)")] = None,
    migrate_first: Annotated[bool, typer.Option("--migrate/--no-migrate", help="Apply migrations first")] = True,
) -> None:
    """Run the API (and, on the embedded default, the worker threads)."""
    import uvicorn

    from atelier.app import create_app
    from atelier.core.logs import configure_logging
    from atelier.core.migrate import upgrade

    settings = Settings()
    configure_logging(settings)
    if migrate_first:
        upgrade(settings.database_url)
    # JSON logs: uvicorn must not install its own text handlers; its loggers then go through the root's.
    log_config: dict[str, Any] = {"log_config": None} if settings.log.format == "json" else {}
    uvicorn.run(
        create_app(settings), host=host or settings.server.host, port=port or settings.server.port, **log_config
    )


@cli.command()
def worker(
    queues: Annotated[str, typer.Option("--queues", "-Q", help="Comma-separated logical queues")] = ",".join(
        ALL_QUEUES
    ),
    concurrency: Annotated[int | None, typer.Option("--concurrency", "-c", help="Processes/threads")] = None,
    pool: Annotated[str, typer.Option(help="prefork (default), threads or solo")] = "prefork",
    loglevel: Annotated[
        str, typer.Option(help="Celery log level (text logs; JSON logs use ATELIER_LOG__LEVEL)")
    ] = "INFO",
    hostname: Annotated[str | None, typer.Option("--hostname", "-n", help="Worker node name")] = None,
) -> None:
    """Run Celery workers for the distributed deployment (needs ATELIER_BROKER__URL)."""
    from atelier.core.logs import configure_logging
    from atelier.engine.worker import run_worker

    settings = Settings()
    configure_logging(settings)
    if settings.embedded:
        typer.echo(
            "atelier worker needs ATELIER_BROKER__URL (redis://… or amqp://…); the embedded default runs "
            "its workers inside `atelier serve`.",
            err=True,
        )
        raise typer.Exit(2)
    if pool not in {"prefork", "threads", "solo"}:
        raise typer.BadParameter("pool must be prefork, threads or solo")
    names = [q.strip() for q in queues.split(",") if q.strip()]
    run_worker(settings, names, concurrency, pool, loglevel, hostname)


@cli.command()
def migrate(revision: Annotated[str, typer.Argument(help="Target revision")] = "head") -> None:
    """Apply database migrations (Alembic) up to REVISION."""
    from atelier.core.migrate import upgrade

    settings = Settings()
    upgrade(settings.database_url, revision)
    typer.echo(f"database at {revision}: {settings.database_url}")


@cli.command()
def openapi() -> None:
    """Print the OpenAPI document of the API as JSON."""
    from atelier.app import create_app

    typer.echo(json.dumps(create_app(Settings()).openapi(), indent=2))


@cli.command()
def token(
    tenant: Annotated[str, typer.Option(help="Tenant the token acts for")] = "default",
    role: Annotated[Role, typer.Option(help="admin, service or viewer")] = Role.SERVICE,
    subject: Annotated[str | None, typer.Option(help="Subject (sub claim)")] = None,
    ttl: Annotated[int | None, typer.Option(help="Lifetime in seconds")] = None,
) -> None:
    """Mint a JWT signed with the configured key."""
    settings = Settings()
    typer.echo(mint_token(settings.auth, tenant=tenant, role=role, subject=subject, ttl_seconds=ttl))


@cli.command("webhook-secret")
def webhook_secret() -> None:
    """Print the webhook signing secrets in effect (configured ones, else the one derived from the JWT key)."""
    from atelier.delivery.signing import secrets_of

    for secret in secrets_of(Settings()):
        typer.echo(secret)


@cli.command("tiny-pipeline")
def tiny_pipeline(
    folder: Annotated[Path, typer.Argument(help="Folder to write the pipeline into")],
    kind: Annotated[str, typer.Option(help="sd (Stable-Diffusion-style) or flux (Flux-style)")] = "sd",
    seed: Annotated[int, typer.Option(help="Seed for the random weights")] = 0,
) -> None:
    """Build a tiny diffusers pipeline with random weights (offline; for tests and smoke runs; needs the ml extra)."""
    from atelier.training.tiny import build_tiny_pipeline

    if kind not in ("sd", "flux"):
        raise typer.BadParameter("kind must be sd or flux")
    typer.echo(build_tiny_pipeline(folder, "sd" if kind == "sd" else "flux", seed))


register_client_commands(cli)  # submit, status, wait, list, cancel, logs, workflow, train, storage, lora, …


def main() -> None:
    """Console-script entry point."""
    cli()
