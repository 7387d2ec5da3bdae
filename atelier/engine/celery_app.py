"""Celery application factory: the same app for the embedded default and for distributed workers.

Every setting here exists to make delivery safe with the database as the source of truth; ARCHITECTURE.md
lists the Celery pitfall each one avoids.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from celery import Celery, Task
from kombu import Queue

from atelier.engine import transport
from atelier.engine.dispatch import Dispatch, message_priority
from atelier.providers.registry import ALL_QUEUES, DEFAULT_QUEUE
from atelier.settings import Settings

RUN_TASK = "tasks.run"
RUN_TRAINING = "training.run"
TASK_NAMES = {"task": RUN_TASK, "training": RUN_TRAINING}
PRIORITY_LEVELS = 10  # broker priorities 0..9


def broker_kind(url: str) -> str:
    """``memory``, ``redis`` or ``amqp`` from a broker URL."""
    scheme = url.split("://", 1)[0].lower()
    if scheme.startswith("redis") or scheme == "rediss":
        return "redis"
    if scheme.startswith(("amqp", "pyamqp")):
        return "amqp"
    return "memory"


def queue_name(settings: Settings, logical: str) -> str:
    """The broker queue of a logical queue (``inference``, ``local``…), with the deployment prefix."""
    return f"{settings.broker.queue_prefix}{logical}"


def _transport_options(settings: Settings, kind: str) -> dict[str, Any]:
    if kind == "memory":
        return {"polling_interval": settings.broker.polling_interval}
    if kind == "redis":
        options: dict[str, Any] = {
            # Redis has no acks: an unacked message comes back after this timeout, so it must outlast any run.
            "visibility_timeout": settings.broker.visibility_timeout_seconds,
            # Priorities are emulated with one list per level; consume them strictly in level order.
            "priority_steps": list(range(PRIORITY_LEVELS)),
            "queue_order_strategy": "priority",
            "sep": ":",
        }
        if settings.broker.queue_prefix:
            options["global_keyprefix"] = settings.broker.queue_prefix
        return options
    return {}


def _queues(settings: Settings, kind: str) -> list[Queue]:
    arguments = {"x-max-priority": PRIORITY_LEVELS - 1} if kind == "amqp" else None
    return [
        Queue(queue_name(settings, name), routing_key=queue_name(settings, name), queue_arguments=arguments)
        for name in ALL_QUEUES
    ]


def celery_config(settings: Settings) -> dict[str, Any]:
    """Every Celery setting of Atelier's app (the broker's queues included), for ``app.conf.update``."""
    broker = settings.broker.url or f"{transport.SCHEME}://localhost/{uuid.uuid4().hex}"
    kind = broker_kind(broker)
    memory_mb = settings.broker.worker_max_memory_per_child_mb
    return {
        "broker_url": broker,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # workers reconnect for as long as it takes
        "broker_transport_options": _transport_options(settings, kind),
        "result_backend": None,
        "task_ignore_result": True,
        "task_acks_late": True,  # ack after the run: a crash mid-run leaves the message to redeliver
        "task_reject_on_worker_lost": True,  # a killed child requeues its message instead of acking it
        "worker_prefetch_multiplier": 1,  # never hoard messages other workers could run
        "task_default_queue": queue_name(settings, DEFAULT_QUEUE),
        "task_queues": _queues(settings, kind),
        "task_create_missing_queues": True,
        "task_queue_max_priority": PRIORITY_LEVELS - 1 if kind == "amqp" else None,
        "task_default_priority": None,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0.1,
            "interval_step": 0.5,
            "interval_max": max(settings.broker.publish_timeout_seconds / 2, 0.2),
        },
        "worker_hijack_root_logger": False,
        "worker_enable_remote_control": kind != "memory",
        # Task events cost three extra broker messages per task; Flower turns them on when it runs
        # (`celery -A atelier.celery_app control enable_events`), so they are off by default.
        "worker_send_task_events": False,
        "worker_max_tasks_per_child": settings.broker.worker_max_tasks_per_child,
        "worker_max_memory_per_child": memory_mb * 1024 if memory_mb else None,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "enable_utc": True,
    }


def create_celery(
    settings: Settings,
    run_task: Callable[[str, str | None], None],
    run_training: Callable[[str, str | None], None] | None = None,
) -> Celery:
    """Build a Celery app whose only jobs are "run task <id>" and "run training <id>"; the database holds the rest."""
    transport.register()
    # amqp: broker connections that retry every second (atelier/engine/connection.py)
    app = Celery("atelier", set_as_current=False, amqp="atelier.engine.connection:AMQP")
    app.conf.update(celery_config(settings))

    # shared=False: each app (e.g. several in one test process) must call its own runtime's runner.
    @app.task(name=RUN_TASK, ignore_result=True, shared=False, bind=True)
    def run(self: Task[Any, Any], task_id: str) -> None:
        run_task(task_id, self.request.id)

    if run_training is not None:
        training = run_training

        @app.task(name=RUN_TRAINING, ignore_result=True, shared=False, bind=True)
        def train(self: Task[Any, Any], training_id: str) -> None:
            training(training_id, self.request.id)

    return app


def publisher(app: Celery, settings: Settings) -> Callable[[Dispatch], None]:
    """A function that sends one Dispatch to the broker (priority encoded for that broker)."""
    inverted = broker_kind(str(app.conf.broker_url)) == "redis"  # Redis consumes level 0 first

    def publish(item: Dispatch) -> None:
        band = message_priority(item.priority, bursting=item.bursting)
        name = queue_name(settings, item.queue)
        app.send_task(
            TASK_NAMES[item.kind],
            args=[str(item.task_id)],
            queue=name,
            routing_key=name,
            priority=(PRIORITY_LEVELS - 1 - band) if inverted else band,
            countdown=item.countdown,
            task_id=item.message_id,
        )

    return publish
