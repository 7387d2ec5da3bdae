"""Per-tenant admission (rate limit, cap on unfinished tasks) and fairness between tenants at submit time.

Both limits are counted in the database (``ix_tasks_tenant_created``, ``ix_tasks_tenant_status``), so they hold
across any number of API processes; each count stops at the limit (``LIMIT n``), so its cost does not grow with
a tenant's backlog. They are admission checks, not reservations: two concurrent creates may both pass at the
edge, which overshoots a limit by at most the number of concurrent requests.

Fairness: a tenant with ``limits.fair_share_pending`` PENDING tasks or more is *bursting*; its new tasks are
published one broker priority band lower than other tenants' tasks of the same priority (see
``engine.dispatch.message_priority``). Within a band the broker is FIFO, so without this a burst of 10 000 tasks
would make another tenant's single task wait for all of them.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from atelier.core.errors import RateLimitedError
from atelier.settings import LimitSettings
from atelier.tasks.enums import TaskStatus
from atelier.tasks.models import Task

WINDOW = timedelta(minutes=1)
ACTIVE_RETRY_AFTER_SECONDS = 5.0
_UNFINISHED = (TaskStatus.PENDING.value, TaskStatus.EXECUTING.value)


def _bounded_count(session: Session, *where: object, cap: int) -> int:
    inner = select(Task.id).where(*where).limit(cap).subquery()  # type: ignore[arg-type]
    return int(session.scalar(select(func.count()).select_from(inner)) or 0)


def admit(session: Session, limits: LimitSettings, tenant: str, now: datetime) -> None:
    """Raise ``RateLimitedError`` (429 + Retry-After) when ``tenant`` may not create a task now."""
    own = limits.tenants.get(tenant)
    rate = (own.rate_per_minute if own else None) or limits.rate_per_minute
    cap = (own.max_active if own else None) or limits.max_active
    if rate is not None:
        since = now - WINDOW
        recent = _bounded_count(session, Task.tenant_id == tenant, Task.created_at > since, cap=rate)
        if recent >= rate:
            oldest = session.scalar(
                select(Task.created_at)
                .where(Task.tenant_id == tenant, Task.created_at > since)
                .order_by(Task.created_at)
                .limit(1)
            )
            wait = (oldest + WINDOW - now).total_seconds() if oldest else WINDOW.total_seconds()
            raise RateLimitedError(
                f"tenant {tenant!r} created {rate} tasks in the last minute (its limit); retry later",
                retry_after=wait,
                details={"limit": "rate_per_minute", "value": rate},
            )
    if cap is not None:
        active = _bounded_count(session, Task.tenant_id == tenant, Task.status.in_(_UNFINISHED), cap=cap)
        if active >= cap:
            raise RateLimitedError(
                f"tenant {tenant!r} has {cap} unfinished tasks (its cap); retry when some have finished",
                retry_after=ACTIVE_RETRY_AFTER_SECONDS,
                details={"limit": "max_active", "value": cap},
            )


def bursting(session: Session, limits: LimitSettings, tenant: str) -> bool:
    """Whether ``tenant`` already has its fair share of PENDING tasks."""
    threshold = limits.fair_share_pending
    pending = _bounded_count(session, Task.tenant_id == tenant, Task.status == TaskStatus.PENDING.value, cap=threshold)
    return pending >= threshold
