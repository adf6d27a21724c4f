"""Background jobs: long work (large imports, ZIP exports) run outside the web request.

A job's state lives in the database, so any web worker can answer a progress
poll. The work itself runs in a thread of the process that started it, with
its own application context and session.

A job whose process dies (a restart, a SIGKILL, a worker killed for its
memory) stays "running" in the table. A running job writes a heartbeat with
its progress, at least every HEARTBEAT_SECONDS while it reports steps.
`get_job` marks a queued or running job whose latest heartbeat (or start) is
older than JOB_STALE_SECONDS (config) as failed with an "interrupted"
message, so every page that reads a job stops waiting for it. A job queue
with its own workers (RQ on the existing Redis) is the step up if jobs must
survive restarts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from flask import Flask, current_app
from sqlalchemy import func, select, update

from ..extensions import db
from ..models import Job, utcnow

logger = logging.getLogger(__name__)

JOB_QUEUED = "queued"
JOB_RUNNING = "running"
JOB_DONE = "done"
JOB_FAILED = "failed"
ACTIVE_STATES = (JOB_QUEUED, JOB_RUNNING)

DEFAULT_STALE_SECONDS = 10 * 60
# A job that reports steps writes its progress at least this often, so a live job never looks stale.
HEARTBEAT_SECONDS = 30
INTERRUPTED_MESSAGE = (
    "任务已中断：处理它的进程已有 {minutes} 分钟没有报告进度，可能已停止（如服务重启或内存不足）。"
    "请重新提交；若是导入名单，请放弃本批次后重新上传。"
)


class Progress:
    """Reports a running job's progress; updates are written every `every` steps or HEARTBEAT_SECONDS."""

    def __init__(self, job_id: int, every: int = 500) -> None:
        self.job_id = job_id
        self.every = every
        self._last = 0
        self._last_write = time.monotonic()

    def __call__(self, done: int, total: int | None = None, message: str | None = None) -> None:
        due = time.monotonic() - self._last_write >= HEARTBEAT_SECONDS
        if done - self._last < self.every and done != total and message is None and not due:
            return
        self._last = done
        self._last_write = time.monotonic()
        values: dict = {"done": done, "heartbeat_at": utcnow()}
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
    _set(job_id, state=JOB_RUNNING, started_at=utcnow(), heartbeat_at=utcnow())
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


def stale_after() -> timedelta:
    """Return how long a queued or running job may go without a heartbeat before it counts as interrupted."""
    return timedelta(seconds=current_app.config.get("JOB_STALE_SECONDS", DEFAULT_STALE_SECONDS))


def fail_stale_jobs(older_than: timedelta | None = None) -> int:
    """Mark queued and running jobs silent for more than `older_than` (default `stale_after()`) as failed; return how many."""
    older_than = older_than or stale_after()
    cutoff = utcnow() - older_than
    started = func.coalesce(Job.heartbeat_at, Job.started_at, Job.created_at)
    result = db.session.execute(
        update(Job)
        .where(Job.state.in_(ACTIVE_STATES), started < cutoff)
        .values(state=JOB_FAILED, message=_interrupted(older_than), finished_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    if result.rowcount:
        logger.warning("Marked %s jobs interrupted: no progress written within %s", result.rowcount, older_than)
    return result.rowcount or 0


def get_job(job_id: int) -> Job | None:
    """Return a job, first marking it failed as interrupted when it has been silent longer than `stale_after()`."""
    job = db.session.scalar(select(Job).where(Job.id == job_id))
    if job is None or job.state not in ACTIVE_STATES:
        return job
    limit = stale_after()
    if _aware(job.heartbeat_at or job.started_at or job.created_at) >= utcnow() - limit:
        return job
    # Conditional, so a job that finished meanwhile keeps its outcome.
    with db.engine.begin() as connection:
        marked = connection.execute(
            update(Job)
            .where(Job.id == job_id, Job.state.in_(ACTIVE_STATES))
            .values(state=JOB_FAILED, message=_interrupted(limit), finished_at=utcnow())
        ).rowcount
    if marked:
        logger.warning("Job %s (%s) marked interrupted: no progress written within %s", job_id, job.kind, limit)
    db.session.refresh(job)
    return job


def _interrupted(limit: timedelta) -> str:
    return INTERRUPTED_MESSAGE.format(minutes=max(int(limit.total_seconds() // 60), 1))


def _aware(moment: datetime | None) -> datetime:
    # SQLite returns naive datetimes for DateTime(timezone=True) columns, which are stored in UTC.
    if moment is None:
        return utcnow()
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _set(job_id: int, **values) -> None:
    with db.engine.begin() as connection:
        connection.execute(update(Job).where(Job.id == job_id).values(**values))


def _is_user_message(error: Exception) -> bool:
    # Domain errors carry Chinese messages meant for staff; anything else is an internal fault.
    from ..domain.roster import RosterFileError

    return isinstance(error, RosterFileError)
