"""Figures for the statistics page: certificates issued, and lookups and downloads per day."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from sqlalchemy import extract, func, select

from ..extensions import db
from ..models import Certificate, DownloadEvent, Exam, LookupEvent, utcnow
from .events import CHANNELS, RESULTS, flush_downloads, flush_lookups, local_day

DAYS_SHOWN = 30


@dataclass(frozen=True)
class IssuedRow:
    exam: str
    kind: str
    year: int  # year of the approval date
    count: int


@dataclass(frozen=True)
class DayRow:
    day: date
    lookups: dict[str, int]  # result -> count
    lookup_total: int
    downloads: int


def issued() -> list[IssuedRow]:
    """Count certificates by exam, kind and approval year."""
    year = extract("year", Certificate.approval_date)
    query = (
        select(Exam.name, Certificate.kind, year, func.count(Certificate.id))
        .join(Exam, Exam.id == Certificate.exam_id)
        .group_by(Exam.name, Certificate.kind, year)
        .order_by(Exam.name, Certificate.kind, year)
    )
    return [IssuedRow(exam, kind, int(year), count) for exam, kind, year, count in db.session.execute(query)]


def days(today: date | None = None, count: int = DAYS_SHOWN) -> list[DayRow]:
    """Return lookups (by result) and downloads for each of the last `count` days, oldest first, zeros included."""
    flush_lookups()
    flush_downloads()
    today = today or local_day(utcnow())
    first = today - timedelta(days=count - 1)
    lookups: dict[date, dict[str, int]] = {}
    query = (
        select(LookupEvent.day, LookupEvent.result, func.count(LookupEvent.id))
        .where(LookupEvent.day >= first, LookupEvent.day <= today)
        .group_by(LookupEvent.day, LookupEvent.result)
    )
    for day, result, number in db.session.execute(query):
        lookups.setdefault(day, {})[result] = number
    downloads = dict(
        db.session.execute(
            select(DownloadEvent.day, func.count(DownloadEvent.id))
            .where(DownloadEvent.day >= first, DownloadEvent.day <= today)
            .group_by(DownloadEvent.day)
        ).all()
    )
    rows = []
    for offset in range(count):
        day = first + timedelta(days=offset)
        by_result = {result: lookups.get(day, {}).get(result, 0) for result in RESULTS}
        rows.append(DayRow(day, by_result, sum(by_result.values()), downloads.get(day, 0)))
    return rows


def lookups_by_channel(today: date | None = None, count: int = DAYS_SHOWN) -> dict[str, int]:
    flush_lookups()
    today = today or local_day(utcnow())
    first = today - timedelta(days=count - 1)
    query = (
        select(LookupEvent.channel, func.count(LookupEvent.id))
        .where(LookupEvent.day >= first, LookupEvent.day <= today)
        .group_by(LookupEvent.channel)
    )
    found = dict(db.session.execute(query).all())
    return {channel: found.get(channel, 0) for channel in CHANNELS}
