"""Celery application factory: the same app for the embedded default and for distributed workers."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from celery import Celery
from kombu import Queue

from atelier.engine import transport
from atelier.engine.dispatch import Dispatch, message_priority
from atelier.providers.registry import ALL_QUEUES, DEFAULT_QUEUE
from atelier.settings import Settings

RUN_TASK = "tasks.run"


def create_celery(settings: Settings, run_task: Callable[[str], None]) -> Celery:
    """Build a Celery app whose only job is "run task <id>"; the database holds everything else."""
    transport.register()
    app = Celery("atelier", set_as_current=False)
    embedded = settings.embedded
    broker = settings.broker.url or f"{transport.SCHEME}://localhost/{uuid.uuid4().hex}"
    app.conf.update(
        broker_url=broker,
        broker_connection_retry_on_startup=True,
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,  # ack after the run: a crash mid-run leaves the message to redeliver
        task_reject_on_worker_lost=True,  # a killed worker process requeues its message instead of acking it
        worker_prefetch_multiplier=1,  # never hoard messages other workers could run
        task_default_queue=DEFAULT_QUEUE,
        task_queues=[Queue(name, routing_key=name) for name in ALL_QUEUES],
        task_create_missing_queues=True,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_enable_remote_control=not embedded,
        worker_send_task_events=False,
        broker_transport_options={"polling_interval": settings.broker.polling_interval} if embedded else {},
        enable_utc=True,
    )

    # shared=False: each app (e.g. several in one test process) must call its own runtime's runner.
    @app.task(name=RUN_TASK, ignore_result=True, shared=False)
    def run(task_id: str) -> None:
        run_task(task_id)

    return app


def publisher(app: Celery) -> Callable[[Dispatch], None]:
    """A function that sends one Dispatch to the broker."""

    def publish(item: Dispatch) -> None:
        app.send_task(
            RUN_TASK,
            args=[str(item.task_id)],
            queue=item.queue,
            routing_key=item.queue,
            priority=message_priority(item.priority),
            countdown=item.countdown,
            task_id=item.message_id,
        )

    return publish
