"""The Celery application: queues, routing, delivery guarantees.

`app` exists at import (tasks register on it, and `celery -A backend.runtime.celery_app`
finds it), but its configuration is a callable Celery evaluates on first use, so importing
this module reads no setting and opens no connection.

Delivery: tasks are acknowledged after they finish (`acks_late`) and given back when their
worker dies (`reject_on_worker_lost`), one message at a time per worker process
(`prefetch_multiplier=1`). A message may therefore arrive twice; every task is idempotent
(an action is claimed atomically in PostgreSQL, so a second delivery finds it claimed), and
what a flushed or restarted Redis loses the reconciler re-enqueues from PostgreSQL.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from backend.config import Settings, get_settings

SCANS, ACTIONS, NOTIFICATIONS = "scans", "actions", "notifications"
QUEUES = (SCANS, ACTIONS, NOTIFICATIONS)

app = Celery("finops", set_as_current=False)


def celery_config(settings: Settings) -> dict[str, Any]:
    if not settings.redis_url:
        raise RuntimeError(
            "the distributed runtime needs REDIS_URL (redis://host:6379/0); without it, "
            "`finops demo` / `finops apply` run everything in one process"
        )
    exchange = Exchange("finops", type="direct")
    return {
        "broker_url": settings.redis_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": settings.task_visibility_timeout_seconds,
            # A paused Redis (accepts, never answers) must fail a call, not hang it: the
            # emergency stop's broadcast waited forever. Above kombu's 1 s BRPOP poll.
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
        },
        "broker_connection_timeout": 5,
        "result_backend": None,  # results live in PostgreSQL, not in Celery
        "task_ignore_result": True,
        "task_queues": [Queue(q, exchange, routing_key=q) for q in QUEUES],
        "task_default_queue": SCANS,
        "task_default_exchange": "finops",
        "task_routes": {
            "finops.execute_action": {"queue": ACTIONS, "routing_key": ACTIONS},
            # On the scans queue: a worker told to stop consuming actions still reconciles.
            "finops.dispatch_due": {"queue": SCANS, "routing_key": SCANS},
            "finops.reconcile": {"queue": SCANS, "routing_key": SCANS},
            "finops.send_pending_notifications": {
                "queue": NOTIFICATIONS,
                "routing_key": NOTIFICATIONS,
            },
        },
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_serializer": "json",
        "accept_content": ["json"],
        "timezone": "UTC",
        "enable_utc": True,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "beat_schedule_filename": str(settings.beat_schedule_path),
        "imports": ["backend.runtime.tasks"],
    }


app.add_defaults(lambda: celery_config(get_settings()))
