"""Read the catalogue tables into the plain `Catalogue` the domain layer uses."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from ..domain import catalogue as domain
from ..extensions import db
from ..models import DocumentKind, Exam, Layout, Specialty


def load_catalogue() -> domain.Catalogue:
    kinds = {
        kind.id: domain.DocumentKind(
            code=kind.code,
            name=kind.name,
            issuer=kind.issuer,
            seal=domain.Seal(code=kind.seal.code, name=kind.seal.name, image_path=kind.seal.image_path),
        )
        for kind in db.session.scalars(select(DocumentKind).options(selectinload(DocumentKind.seal)))
    }
    layouts = {
        layout.code: domain.Layout(
            code=layout.code,
            name=layout.name,
            title=layout.title,
            document_kind=kinds[layout.document_kind_id],
            co_issuers=tuple(layout.co_issuers or ()),
            statement=layout.statement,
        )
        for layout in db.session.scalars(select(Layout))
    }
    exams = {exam.name: _exam(exam) for exam in db.session.scalars(_exams_query())}
    return domain.Catalogue(exams=exams, layouts=layouts)


def _exams_query():
    return select(Exam).options(
        selectinload(Exam.specialties).selectinload(Specialty.certificate_layout),
        selectinload(Exam.certificate_layout),
        selectinload(Exam.pass_layout),
    )


def _exam(exam: Exam) -> domain.Exam:
    return domain.Exam(
        name=exam.name,
        category=exam.category,
        specialties=tuple(s.name for s in exam.specialties),
        levels=tuple(exam.levels or ()),
        certificate_layout=exam.certificate_layout.code,
        pass_layout=exam.pass_layout.code,
        specialty_layouts={s.name: s.certificate_layout.code for s in exam.specialties if s.certificate_layout},
    )
