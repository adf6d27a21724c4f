"""The certificate catalogue as plain data: exams, specialties, layouts, seals.

The database holds the catalogue (seeded by a migration, edited by staff);
`load_catalogue` reads it into these frozen objects so that roster parsing,
issuing and rendering work on plain data and never touch a session.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Roster kinds as staff name them: a certificate (证书) or a pass certificate (合格证明).
KIND_CERTIFICATE = "certificate"
KIND_PASS = "pass"
KIND_LABELS = {KIND_CERTIFICATE: "证书", KIND_PASS: "合格证明"}

# Exam categories decide which document kind a certificate row becomes.
CATEGORY_QUALIFICATION = "qualification"
CATEGORY_TITLE = "title"


@dataclass(frozen=True)
class Seal:
    code: str  # 印章编码, printed under the seal
    name: str  # 印章名称, drawn along the specimen's arc
    image_path: str | None = None  # official image under instance/; None draws the 样章 specimen


@dataclass(frozen=True)
class DocumentKind:
    code: str  # "qualification", "title" or "pass"
    name: str  # 职业资格电子证书, 职称考试电子证书, 合格证明
    issuer: str  # the body that issues and seals this kind
    seal: Seal


@dataclass(frozen=True)
class Layout:
    code: str  # stable key, also the template name under templates/certificates/
    name: str
    title: str  # the heading printed on the document
    document_kind: DocumentKind
    co_issuers: tuple[str, ...] = ()  # industry authorities named beside the issuer
    statement: str = ""  # fixed sentence; {exam} and {specialty} are filled in


@dataclass(frozen=True)
class Exam:
    name: str
    category: str  # CATEGORY_QUALIFICATION or CATEGORY_TITLE
    specialties: tuple[str, ...]
    levels: tuple[str, ...] = ()  # 级别, only title exams have them
    certificate_layout: str | None = None  # layout code for KIND_CERTIFICATE
    pass_layout: str | None = None  # layout code for KIND_PASS
    # Specialty name -> certificate layout code, where a group of specialties
    # is co-issued with a different authority (二级造价工程师).
    specialty_layouts: dict[str, str] = field(default_factory=dict, hash=False)

    def layout_code(self, kind: str, specialty: str) -> str | None:
        """Return the layout code for a document of `kind` in `specialty`."""
        if kind == KIND_PASS:
            return self.pass_layout
        return self.specialty_layouts.get(specialty, self.certificate_layout)


@dataclass(frozen=True)
class Catalogue:
    exams: dict[str, Exam]
    layouts: dict[str, Layout]

    def exam(self, name: str) -> Exam | None:
        return self.exams.get(name)

    def layout_for(self, exam_name: str, kind: str, specialty: str) -> Layout | None:
        exam = self.exams.get(exam_name)
        if exam is None:
            return None
        code = exam.layout_code(kind, specialty)
        return self.layouts.get(code) if code else None
