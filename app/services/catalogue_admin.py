"""Catalogue changes made by admins: add an exam or a specialty, edit a layout's co-issuers and statement.

The import and the renderer read the catalogue through `load_catalogue` on
every call, so a change here applies to the next upload and the next PDF.
"""

from __future__ import annotations

import logging
import re
import unicodedata

from sqlalchemy import select

from ..domain.catalogue import CATEGORY_QUALIFICATION, CATEGORY_TITLE
from ..extensions import db
from ..models import Exam, Layout, Specialty
from . import audit

logger = logging.getLogger(__name__)

CATEGORY_LABELS = {CATEGORY_QUALIFICATION: "职业资格", CATEGORY_TITLE: "职称"}
# The document kind a category's certificates are printed as.
CATEGORY_KINDS = {CATEGORY_QUALIFICATION: "qualification", CATEGORY_TITLE: "title"}
PASS_KIND = "pass"
MAX_NAME = 50
MAX_STATEMENT = 300
PLACEHOLDERS = ("{exam}", "{specialty}", "{issuer}")
_PLACEHOLDER = re.compile(r"\{[^{}]*\}")
_LIST_SEPARATORS = re.compile(r"[\n,，、;；]+")


class CatalogueError(ValueError):
    """A catalogue change that cannot be made; `errors` maps a form field to Chinese messages."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("；".join(m for messages in errors.values() for m in messages))
        self.errors = errors


def split_list(text: str) -> list[str]:
    """Split text typed one item per line (or separated by commas or 、) into clean items."""
    items = [unicodedata.normalize("NFKC", item).strip() for item in _LIST_SEPARATORS.split(text or "")]
    return list(dict.fromkeys(item for item in items if item))


def _clean_name(text: str) -> str:
    return "".join(unicodedata.normalize("NFKC", text or "").split())


def _layout(code: str) -> Layout | None:
    return db.session.scalar(select(Layout).where(Layout.code == code)) if code else None


def _check_layout(errors: dict, key: str, code: str, kind: str, label: str) -> Layout | None:
    layout = _layout(code)
    if layout is None:
        errors.setdefault(key, []).append(f"{label}「{code}」不存在，请从列表中选择。")
    elif layout.document_kind.code != kind:
        errors.setdefault(key, []).append(
            f"{label}「{layout.name}」印制的是{layout.document_kind.name}，不能用于此处，请选择{kind_name(kind)}的版式。"
        )
    return layout


def kind_name(code: str) -> str:
    return {"qualification": "职业资格电子证书", "title": "职称考试电子证书", "pass": "合格证明"}.get(code, code)


def layouts_of_kind(kind: str) -> list[Layout]:
    return [layout for layout in db.session.scalars(select(Layout).order_by(Layout.id)) if layout.document_kind.code == kind]


def add_exam(
    *,
    name: str,
    category: str,
    levels: list[str],
    specialties: list[str],
    certificate_layout: str,
    pass_layout: str,
    actor: str,
) -> Exam:
    """Add an exam with its specialties; raise CatalogueError naming each invalid field."""
    errors: dict[str, list[str]] = {}
    name = _clean_name(name)
    if not name:
        errors["name"] = ["考试名称为空，请填写考试名称，如“一级造价工程师”。"]
    elif len(name) > MAX_NAME:
        errors["name"] = [f"考试名称「{name[:20]}…」超过 {MAX_NAME} 个字，请核对。"]
    elif db.session.scalar(select(Exam.id).where(Exam.name == name)):
        errors["name"] = [f"考试「{name}」已在目录中，请直接为它新增专业。"]
    if category not in CATEGORY_KINDS:
        errors["category"] = ["请选择考试类别：职业资格或职称。"]
    specialties = [_clean_name(s) for s in specialties]
    if not specialties:
        errors["specialties"] = ["请至少填写一个专业，每行一个。"]
    too_long = [s for s in specialties if len(s) > MAX_NAME]
    if too_long:
        errors.setdefault("specialties", []).append(f"专业名称「{too_long[0][:20]}…」超过 {MAX_NAME} 个字，请核对。")
    kind = CATEGORY_KINDS.get(category, "qualification")
    cert_layout = _check_layout(errors, "certificate_layout", certificate_layout, kind, "证书版式")
    pass_layout_row = _check_layout(errors, "pass_layout", pass_layout, PASS_KIND, "合格证明版式")
    if errors:
        raise CatalogueError(errors)

    exam = Exam(
        name=name,
        category=category,
        levels=[_clean_name(level) for level in levels],
        certificate_layout=cert_layout,
        pass_layout=pass_layout_row,
    )
    exam.specialties = [Specialty(name=specialty) for specialty in specialties]
    db.session.add(exam)
    db.session.flush()
    audit.record(
        actor, "catalogue.exam.create", f"exam:{exam.id}",
        after={
            "name": name, "category": category, "levels": exam.levels, "specialties": specialties,
            "certificate_layout": cert_layout.code, "pass_layout": pass_layout_row.code,
        },
    )
    db.session.commit()
    logger.info("Exam %s added to the catalogue by %s", exam.id, actor)
    return exam


def add_specialty(exam: Exam, *, name: str, layout_code: str, actor: str) -> Specialty:
    """Add a specialty to an exam, optionally with its own certificate layout."""
    errors: dict[str, list[str]] = {}
    name = _clean_name(name)
    if not name:
        errors["name"] = ["专业名称为空，请填写专业名称。"]
    elif len(name) > MAX_NAME:
        errors["name"] = [f"专业名称「{name[:20]}…」超过 {MAX_NAME} 个字，请核对。"]
    elif name in {s.name for s in exam.specialties}:
        errors["name"] = [f"专业「{name}」已是{exam.name}的专业，无需重复添加。"]
    layout = None
    if layout_code:
        layout = _check_layout(errors, "layout", layout_code, CATEGORY_KINDS[exam.category], "证书版式")
    if errors:
        raise CatalogueError(errors)

    specialty = Specialty(exam=exam, name=name, certificate_layout=layout)
    db.session.add(specialty)
    db.session.flush()
    audit.record(
        actor, "catalogue.specialty.create", f"exam:{exam.id}",
        after={"exam": exam.name, "specialty": name, "certificate_layout": layout.code if layout else None},
    )
    db.session.commit()
    logger.info("Specialty %s added to exam %s by %s", specialty.id, exam.id, actor)
    return specialty


def update_layout(layout: Layout, *, co_issuers: list[str], statement: str, actor: str) -> bool:
    """Set a layout's co-issuers and statement; return False when nothing changed."""
    statement = (statement or "").strip()
    errors: dict[str, list[str]] = {}
    unknown = [p for p in _PLACEHOLDER.findall(statement) if p not in PLACEHOLDERS]
    if unknown:
        errors["statement"] = [
            f"说明文字中的「{unknown[0]}」不是可用的占位符，只能使用 {{exam}}（考试名称）、"
            "{specialty}（专业）和 {issuer}（发证机关）。"
        ]
    if len(statement) > MAX_STATEMENT:
        errors.setdefault("statement", []).append(f"说明文字有 {len(statement)} 个字，超过 {MAX_STATEMENT} 字的上限，请精简。")
    long_issuer = [issuer for issuer in co_issuers if len(issuer) > 100]
    if long_issuer:
        errors["co_issuers"] = [f"联合发证单位「{long_issuer[0][:20]}…」超过 100 个字，请核对。"]
    if errors:
        raise CatalogueError(errors)

    before = {"co_issuers": list(layout.co_issuers or []), "statement": layout.statement}
    after = {"co_issuers": co_issuers, "statement": statement}
    if before == after:
        return False
    layout.co_issuers = co_issuers
    layout.statement = statement
    audit.record(actor, "catalogue.layout.update", f"layout:{layout.code}", before=before, after=after)
    db.session.commit()
    logger.info("Layout %s updated by %s", layout.code, actor)
    return True
