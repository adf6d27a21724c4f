"""Background jobs: long work (large imports, ZIP exports) run outside the web request.

A job's state lives in the database, so any web worker can answer a progress
poll. The work itself runs in a thread of the process that started it, with
its own application context and session.

NOTE: a job whose process dies (a restart, a SIGKILL) stays "running" in the
table; `fail_stale_jobs` marks such jobs failed and is run at startup of the
CLI commands that use jobs. A job queue with its own workers (RQ on the
existing Redis) is the step up if jobs must survive restarts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta

from flask import Flask, current_app
from sqlalchemy import select, update

from ..extensions import db
from ..models import Job, utcnow

logger = logging.getLogger(__name__)

JOB_QUEUED = "queued"
JOB_RUNNING = "running"
JOB_DONE = "done"
JOB_FAILED = "failed"


class Progress:
    """Reports a running job's progress; updates are written at most every `every` steps."""

    def __init__(self, job_id: int, every: int = 500) -> None:
        self.job_id = job_id
        self.every = every
        self._last = 0

    def __call__(self, done: int, total: int | None = None, message: str | None = None) -> None:
        if done - self._last < self.every and done != total and message is None:
            return
        self._last = done
        values: dict = {"done": done}
        if total is not None:
            values["total"] = total
        if message is not None:
            values["message"] = message
        # A separate short transaction, so progress is visible while the job's own work is uncommitted.
        with db.engine.begin() as connection:
            connection.execute(update(Job).where(Job.id == self.job_id).values(**values))


def create_job(kind: str, *, actor: str, target: str | None = None) -> Job:
    job = Job(kind=kind, state=JOB_QUEUED, created_by=actor, target=target)
    db.session.add(job)
    db.session.commit()
    return job


def run_job(job_id: int, work: Callable[[Progress], str | None]) -> None:
    """Run `work` for job `job_id` in this thread, recording the outcome.

    `work` receives a `Progress` and returns an optional result (a file name,
    a message). Any exception marks the job failed with a Chinese message.
    """
    _set(job_id, state=JOB_RUNNING, started_at=utcnow())
    try:
        result = work(Progress(job_id))
    except Exception as error:  # noqa: BLE001 - a job records every failure instead of dying silently
        db.session.rollback()
        logger.exception("Job %s failed", job_id)
        message = str(error) if _is_user_message(error) else "处理失败，请联系系统管理员并提供任务编号 %s。" % job_id
        _set(job_id, state=JOB_FAILED, message=message, finished_at=utcnow())
        return
    _set(job_id, state=JOB_DONE, result=result, finished_at=utcnow())


def start_job(job_id: int, work: Callable[[Progress], str | None]) -> threading.Thread:
    """Run `work` for job `job_id` in a background thread with its own application context."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]

    def target() -> None:
        with app.app_context():
            run_job(job_id, work)

    thread = threading.Thread(target=target, name=f"job-{job_id}", daemon=True)
    thread.start()
    return thread


def fail_stale_jobs(older_than: timedelta = timedelta(hours=6)) -> int:
    """Mark jobs still running after `older_than` as failed; return how many."""
    cutoff = utcnow() - older_than
    result = db.session.execute(
        update(Job)
        .where(Job.state.in_([JOB_QUEUED, JOB_RUNNING]), Job.created_at < cutoff)
        .values(state=JOB_FAILED, message="任务因服务重启而中断，请重新提交。", finished_at=utcnow())
    )
    db.session.commit()
    return result.rowcount or 0


def get_job(job_id: int) -> Job | None:
    return db.session.scalar(select(Job).where(Job.id == job_id))


def _set(job_id: int, **values) -> None:
    with db.engine.begin() as connection:
        connection.execute(update(Job).where(Job.id == job_id).values(**values))


def _is_user_message(error: Exception) -> bool:
    # Domain errors carry Chinese messages meant for staff; anything else is an internal fault.
    from ..domain.roster import RosterFileError

    return isinstance(error, RosterFileError)
