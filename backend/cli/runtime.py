"""`finops worker` and `finops scheduler`: the distributed runtime's two processes."""

from __future__ import annotations

import threading
from typing import Annotated

import typer

from backend.cli.app import CommandError, app, console, handle_errors, settings


def _runtime_settings() -> None:
    if not settings().redis_url:
        raise CommandError(
            "REDIS_URL is not set: the workers and the scheduler need a Redis broker "
            "(redis://host:6379/0); the embedded mode runs `finops apply` in one process",
            2,
        )


@app.command("worker")
@handle_errors
def worker(
    queues: Annotated[
        str, typer.Option("--queues", "-Q", help="Comma-separated: scans, actions, notifications.")
    ] = "scans,actions,notifications",
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1)] = 2,
    pool: Annotated[
        str, typer.Option("--pool", help="prefork (processes), threads, or solo.")
    ] = "prefork",
    name: Annotated[str, typer.Option("--name", "-n", help="Node name.")] = "finops@%h",
    loglevel: Annotated[str, typer.Option("--loglevel")] = "INFO",
) -> None:
    """Run a Celery worker: executes scans, actions and notifications from the queues."""
    _runtime_settings()
    from backend.core.migrations import ensure_schema
    from backend.runtime.celery_app import QUEUES
    from backend.runtime.celery_app import app as celery

    unknown = sorted(set(queues.split(",")) - set(QUEUES))
    if unknown:
        raise CommandError(f"unknown queue(s) {unknown}: expected some of {list(QUEUES)}", 2)
    ensure_schema()
    celery.worker_main(
        [
            "worker",
            f"--queues={queues}",
            f"--concurrency={concurrency}",
            f"--pool={pool}",
            f"--hostname={name}",
            f"--loglevel={loglevel}",
            "--without-gossip",
            "--without-mingle",
        ]
    )


@app.command("scheduler")
@handle_errors
def scheduler(loglevel: Annotated[str, typer.Option("--loglevel")] = "INFO") -> None:
    """Run Celery beat: each policy's cron starts its cycle; the reconciler ticks."""
    _runtime_settings()
    from backend.core import db_clock
    from backend.core.database import get_engine
    from backend.core.migrations import ensure_schema
    from backend.runtime.beat import FileScheduler, scheduled_entries
    from backend.runtime.celery_app import app as celery

    ensure_schema()
    entries = scheduled_entries(settings())
    celery.conf.beat_schedule = entries
    path = settings().beat_schedule_path
    console.print(f"{len(entries)} schedule entries; schedule file {path}", highlight=False)
    for name, entry in entries.items():
        console.print(f"  {name}: {entry['schedule']!r}", highlight=False, markup=False)
    scheduler_cls = f"{FileScheduler.__module__}:{FileScheduler.__name__}"
    # Beat fires by the database's clock, which it may not otherwise ask for hours.
    db_clock.keep_measured(get_engine(), threading.Event())
    celery.Beat(schedule=str(path), scheduler=scheduler_cls, loglevel=loglevel).run()
