"""The audit log: write entries, filter them and export them as CSV or XLSX.

Entries are only ever inserted. Nothing here updates or deletes one, and the
database refuses both through triggers that migration 0004 creates.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from flask import current_app
from flask_login import user_logged_in, user_logged_out
from openpyxl import Workbook
from sqlalchemy import Select, select

from ..extensions import db
from ..id_numbers import mask_id_numbers
from ..models import AuditEntry

logger = logging.getLogger(__name__)

# Rows an export contains at most; the page asks staff to narrow the filter beyond that.
EXPORT_LIMIT = 100_000
PAGE_SIZE = 100
# Highest page number served; larger numbers overflow the database's 64-bit OFFSET.
MAX_PAGE = 1_000_000

# Chinese names of the actions, for the page, the filter and the exports.
ACTION_LABELS = {
    "staff.login": "工作人员登录",
    "staff.logout": "工作人员退出",
    "staff.create": "创建工作人员账号",
    "staff.reset_password": "重置工作人员密码",
    "staff.deactivate": "停用工作人员账号",
    "staff.activate": "启用工作人员账号",
    "staff.enrol_totp": "绑定身份验证器",
    "batch.upload": "上传名单",
    "batch.confirm": "确认导入",
    "batch.discard": "放弃批次",
    "batch.include_hidden": "设置是否导入隐藏行",
    "certificate.correct": "更正证书信息",
    "certificate.revoke": "撤销证书",
    "certificate.reinstate": "恢复证书",
    "catalogue.exam.create": "新增考试",
    "catalogue.specialty.create": "新增专业",
    "catalogue.layout.update": "修改证书版式",
}

EXPORT_HEADER = ["时间", "操作人", "操作", "操作代码", "对象", "详情", "修改前", "修改后"]


def record(
    actor: str,
    action: str,
    target: str | None = None,
    *,
    detail: dict | None = None,
    before: dict | None = None,
    after: dict | None = None,
) -> AuditEntry:
    """Add an audit entry to the session; the caller's commit writes it with the change it describes."""
    # detail, before and after are masked by AuditEntry's validator; the target is free text too.
    entry = AuditEntry(
        actor=actor, action=action, target=mask_id_numbers(target), detail=detail or {}, before=before, after=after
    )
    db.session.add(entry)
    return entry


@dataclass(frozen=True)
class AuditFilter:
    actor: str = ""
    action: str = ""
    target: str = ""
    date_from: date | None = None  # local dates, both ends included
    date_to: date | None = None

    def is_empty(self) -> bool:
        return not (self.actor or self.action or self.target or self.date_from or self.date_to)


def _local_zone() -> ZoneInfo:
    return ZoneInfo(current_app.config.get("BABEL_DEFAULT_TIMEZONE") or "Asia/Shanghai")


def local_time(value: datetime) -> datetime:
    """Return a stored time in the bureau's zone; SQLite returns naive UTC values."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=ZoneInfo("UTC"))
    return value.astimezone(_local_zone())


def filtered_query(criteria: AuditFilter) -> Select:
    """Return the entries matching `criteria`, newest first."""
    query = select(AuditEntry).order_by(AuditEntry.at.desc(), AuditEntry.id.desc())
    if criteria.actor:
        query = query.where(AuditEntry.actor == criteria.actor)
    if criteria.action:
        query = query.where(AuditEntry.action == criteria.action)
    if criteria.target:
        query = query.where(AuditEntry.target == criteria.target)
    zone = _local_zone()
    if criteria.date_from:
        query = query.where(AuditEntry.at >= datetime.combine(criteria.date_from, time.min, zone))
    # The last representable day (9999-12-31) has no next day, and nothing is stored after it.
    if criteria.date_to and criteria.date_to < date.max:
        query = query.where(AuditEntry.at < datetime.combine(criteria.date_to + timedelta(days=1), time.min, zone))
    return query


def search(criteria: AuditFilter, *, page: int = 1) -> list[AuditEntry]:
    page = min(max(page, 1), MAX_PAGE)
    query = filtered_query(criteria).limit(PAGE_SIZE).offset((page - 1) * PAGE_SIZE)
    return list(db.session.scalars(query))


def actors() -> list[str]:
    return list(db.session.scalars(select(AuditEntry.actor).distinct().order_by(AuditEntry.actor)))


def export_rows(criteria: AuditFilter) -> list[list[str]]:
    """Return the header and one row per matching entry, every cell safe to open in a spreadsheet."""
    # NOTE: every row is built in memory; bench/records_bench.py peaked at about 600 MB RSS for 100,000 rows.
    rows = [EXPORT_HEADER]
    for entry in db.session.scalars(filtered_query(criteria).limit(EXPORT_LIMIT)):
        cells = [
            local_time(entry.at).strftime("%Y-%m-%d %H:%M:%S"),
            entry.actor,
            ACTION_LABELS.get(entry.action, entry.action),
            entry.action,
            entry.target or "",
            _json_text(entry.detail),
            _json_text(entry.before),
            _json_text(entry.after),
        ]
        rows.append([safe_cell(cell) for cell in cells])
    return rows


def _json_text(value: dict | None) -> str:
    if not value:
        return ""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def safe_cell(text: str) -> str:
    """Prefix ' to text a spreadsheet would run as a formula (it starts with = + - @, tab or CR)."""
    if text and text[0] in "=+-@\t\r":
        return "'" + text
    return text


def export_csv(criteria: AuditFilter) -> str:
    """Return the matching entries as CSV text with a BOM, so Excel opens it as UTF-8."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerows(export_rows(criteria))
    return "\ufeff" + buffer.getvalue()


def export_xlsx(criteria: AuditFilter) -> bytes:
    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet("审计日志")
    for row in export_rows(criteria):
        # openpyxl stores text starting with "=" as a formula; safe_cell has prefixed every such cell.
        sheet.append(row)
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


def _on_login(sender, user, **extra) -> None:
    if getattr(user, "is_staff", False):
        record(user.username, "staff.login", f"staff:{user.username}")
        db.session.commit()


def _on_logout(sender, user, **extra) -> None:
    if getattr(user, "is_staff", False):
        record(user.username, "staff.logout", f"staff:{user.username}")
        db.session.commit()


# Staff logins and logouts are audited whichever view performs them.
user_logged_in.connect(_on_login)
user_logged_out.connect(_on_logout)
