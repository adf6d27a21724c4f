"""Staff pages for the audit log: filter, page through and export as CSV or XLSX. Read only."""

from __future__ import annotations

from datetime import date, datetime

from flask import Response, render_template, request, stream_with_context

from ..services import audit, exports
from . import bp

XLSX_MIMETYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


@bp.app_template_filter("local_time")
def local_time_filter(value: datetime | None) -> str:
    return audit.local_time(value).strftime("%Y-%m-%d %H:%M:%S") if value else ""


# Labels of the keys in audit details and before/after values; other keys are shown as stored.
AUDIT_KEY_LABELS = {
    "number": "证书编号", "name": "姓名", "gender": "性别", "id_type": "证件类型", "id_number": "证件号码",
    "birth_month": "出生年月", "specialty": "专业", "level": "级别", "approval_date": "批准日期",
    "layout": "证书版式", "certificate_layout": "证书版式", "status": "状态", "revoked_at": "撤销时间",
    "revoke_reason": "撤销原因", "reason": "原因", "version": "版本", "filename": "文件名", "row": "行号",
    "role": "角色", "active": "启用", "phone": "手机号码", "exam": "考试项目", "totp_enrolled": "已绑定动态验证码",
    "batch": "批次", "bytes": "字节数", "include": "范围", "before": "修改前", "after": "修改后",
}
STATUS_TEXT = {"valid": "有效", "revoked": "已撤销"}
ROLE_TEXT = {"admin": "管理员", "operator": "业务经办", "auditor": "审计员"}


@bp.app_template_filter("audit_label")
def audit_label_filter(key: str) -> str:
    return AUDIT_KEY_LABELS.get(key, key)


@bp.app_template_filter("audit_value")
def audit_value_filter(value, key: str):
    """Return an audit value as staff read it: statuses, roles and yes/no in Chinese, times in the bureau's zone."""
    if key == "status":
        return STATUS_TEXT.get(value, value)
    if key == "role":
        return ROLE_TEXT.get(value, value)
    if isinstance(value, bool):
        return "是" if value else "否"
    if key.endswith("_at") and isinstance(value, str):
        try:
            return local_time_filter(datetime.fromisoformat(value))
        except ValueError:
            return value
    return value


@bp.app_template_filter("action_label")
def action_label_filter(action: str) -> str:
    return audit.ACTION_LABELS.get(action, action)


def _parse_day(key: str, errors: list[str]) -> date | None:
    text = (request.args.get(key) or "").strip()
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        label = "开始日期" if key == "from" else "结束日期"
        errors.append(f"{label}「{text[:20]}」无法识别，请写成 2024-10-18 这样的日期。")
        return None


def _criteria() -> tuple[audit.AuditFilter, list[str]]:
    errors: list[str] = []
    criteria = audit.AuditFilter(
        actor=(request.args.get("actor") or "").strip(),
        action=(request.args.get("action") or "").strip(),
        target=(request.args.get("target") or "").strip(),
        date_from=_parse_day("from", errors),
        date_to=_parse_day("to", errors),
    )
    return criteria, errors


@bp.get("/audit")
def audit_log():
    criteria, errors = _criteria()
    page = min(max(request.args.get("page", 1, type=int) or 1, 1), audit.MAX_PAGE)
    entries = audit.search(criteria, page=page)
    return render_template(
        "admin/audit.html",
        criteria=criteria,
        errors=errors,
        entries=entries,
        page=page,
        page_size=audit.PAGE_SIZE,
        actors=audit.actors(),
        actions=audit.ACTION_LABELS,
        query_args={key: value for key, value in request.args.items() if key != "page"},
    )


def _export_name(extension: str) -> str:
    return f"audit-{date.today():%Y%m%d}.{extension}"


@bp.get("/audit.csv")
def audit_csv():
    """Stream the CSV export while the rows are read, so a large log never sits in memory."""
    criteria, _errors = _criteria()
    if request.method == "HEAD":
        # stream_with_context would push a copy of the request context for a body that is never sent.
        body = None
    else:
        # stream_with_context keeps the request context, and so the database session, until the server
        # closes the response: when the body ends or the client goes away. Popping it then ends the
        # session (teardown), after the generator's finally has closed the cursor.
        body = stream_with_context(exports.audit_csv_chunks(criteria))
    response = Response(body, mimetype="text/csv")
    response.headers["Content-Disposition"] = f"attachment; filename={_export_name('csv')}"
    return response


@bp.get("/audit.xlsx")
def audit_xlsx():
    criteria, _errors = _criteria()
    response = Response(exports.audit_xlsx_bytes(criteria), mimetype=XLSX_MIMETYPE)
    response.headers["Content-Disposition"] = f"attachment; filename={_export_name('xlsx')}"
    return response
