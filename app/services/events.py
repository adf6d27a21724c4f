"""Lookup and download events for the statistics page, and their retention.

Events hold no personal data: a lookup event stores the time, the channel and
the result, and a download event stores the time and the certificate's row id.
No address, name, number or token is stored.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from flask import current_app
from sqlalchemy import delete, insert
from sqlalchemy.exc import SQLAlchemyError

from ..extensions import db
from ..models import DownloadEvent, LookupEvent, utcnow

logger = logging.getLogger(__name__)

CHANNELS = ("form", "qr", "api", "file")
RESULTS = ("valid", "revoked", "not_found")


def local_day(moment: datetime) -> date:
    zone = ZoneInfo(current_app.config.get("BABEL_DEFAULT_TIMEZONE") or "Asia/Shanghai")
    return moment.astimezone(zone).date()


# Lookups are the hot path: a commit per lookup cost more than the lookup
# itself, so their events are buffered per process and written in batches.
# NOTE: a process killed with SIGKILL loses its unwritten events (at most
# LOOKUP_EVENT_BUFFER of them); they only feed statistics.
_buffer: list[dict] = []
_buffer_lock = threading.Lock()
_last_flush = time.monotonic()


def record_lookup(channel: str, result: str) -> None:
    """Count one public lookup; it is written with the next batch of lookup events."""
    if channel not in CHANNELS or result not in RESULTS:
        raise ValueError(f"unknown lookup channel {channel!r} or result {result!r}")
    now = utcnow()
    with _buffer_lock:
        _buffer.append({"at": now, "day": local_day(now), "channel": channel, "result": result})
        due = len(_buffer) >= current_app.config["LOOKUP_EVENT_BUFFER"] or (
            time.monotonic() - _last_flush >= current_app.config["LOOKUP_EVENT_FLUSH_SECONDS"]
        )
    if due:
        flush_lookups()


def flush_lookups() -> int:
    """Write the buffered lookup events in one short transaction of their own; return how many."""
    global _last_flush
    with _buffer_lock:
        pending = list(_buffer)
        _buffer.clear()
        _last_flush = time.monotonic()
    if not pending:
        return 0
    try:
        with db.engine.begin() as connection:
            connection.execute(insert(LookupEvent.__table__), pending)
    except SQLAlchemyError:
        logger.exception("Could not record %s lookup events", len(pending))
        return 0
    return len(pending)


def record_download(certificate_id: int) -> None:
    """Count one PDF download. A database error is logged and rolled back, and the download still proceeds."""
    now = utcnow()
    _write(DownloadEvent(at=now, day=local_day(now), certificate_id=certificate_id))


def _write(event: LookupEvent | DownloadEvent) -> None:
    try:
        db.session.add(event)
        db.session.commit()
    except SQLAlchemyError:
        db.session.rollback()
        logger.exception("Could not record %s", type(event).__name__)


def purge(*, days: int | None = None, now: datetime | None = None) -> tuple[int, int]:
    """Delete lookup and download events older than `days` (default LOOKUP_LOG_RETENTION_DAYS).

    Return the numbers of lookup and download events deleted.
    """
    if days is None:
        days = int(current_app.config["LOOKUP_LOG_RETENTION_DAYS"])
    if days < 1:
        raise ValueError(f"retention must be at least 1 day, got {days}")
    cutoff = (now or utcnow()) - timedelta(days=days)
    lookups = db.session.execute(delete(LookupEvent).where(LookupEvent.at < cutoff)).rowcount
    downloads = db.session.execute(delete(DownloadEvent).where(DownloadEvent.at < cutoff)).rowcount
    db.session.commit()
    logger.info("Purged %s lookup and %s download events older than %s days", lookups, downloads, days)
    return lookups, downloads
