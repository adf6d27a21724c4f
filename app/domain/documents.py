"""Certificate documents: the plain data a PDF is drawn from, and the renderer.

This module imports nothing from Flask or the database layer. Callers build a
`CertificateDocument` from a stored record and the catalogue, and get bytes.
"""

from __future__ import annotations

import base64
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path

import qrcode
import qrcode.constants
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from pypdf import PdfReader
from reportlab import rl_config
from xhtml2pdf import pisa
from xhtml2pdf.config.resources import ResourceAccessPolicy

from .catalogue import Layout
from .fonts import PRIMARY_FONT, fontrun, missing_glyphs, register_fonts
from .image_reuse import install_image_reuse
from .seals import seal_png, seal_render_path

logger = logging.getLogger(__name__)

# reportlab 5.1 wraps every stream in ASCII85 by default, and without its C
# accelerator that pure-Python encoder took 45% of a render (cProfile, 2-core VM). PDF streams
# are binary-safe, so the filter only made files 25% larger and slower.
rl_config.useA85 = 0
# Encodes the seal image once per process rather than once per certificate.
install_image_reuse()


@dataclass(frozen=True)
class CertificateDocument:
    layout: Layout
    number: str  # 证书编号 / 编号
    name: str
    gender: str  # 男 or 女
    id_type: str  # 居民身份证, 护照, ...
    id_number: str  # printed whole: the PDF is the holder's own document
    birth_month: date  # first day of the month
    exam: str
    specialty: str
    level: str | None  # 级别, title exams only
    approval_date: date
    qr_url: str  # BASE_URL/v/<token>
    lookup_url: str  # BASE_URL/verify, printed beside the QR code


PROJECT_DIR = Path(__file__).resolve().parents[2]
TEMPLATE_DIR = PROJECT_DIR / "templates" / "certificates"
DEFAULT_ID_TYPE = "居民身份证"
PASS_KIND = "pass"
TITLE_KIND = "title"
TITLE_PASS_LAYOUT = "pass_title"
QR_MODULE_PX = 1  # one pixel per module: the PDF viewer scales it without interpolation
QR_PRINT_MM = 28.0
QR_MIN_MODULE_MM = 0.4  # below this a phone camera misreads printed modules


class MissingGlyphError(ValueError):
    """A field contains a character that none of the shipped fonts can draw."""

    def __init__(self, field_label: str, char: str) -> None:
        self.field_label = field_label
        self.char = char
        super().__init__(
            f"{field_label}中的字符「{char}」(U+{ord(char):04X}) 没有可用字体，无法生成证书"
        )


class ResourceRejectedError(ValueError):
    """The template referred to a resource outside static/ and instance/."""


@dataclass(frozen=True)
class Field:
    label: str
    value: str


def format_month(value: date) -> str:
    return f"{value.year}年{value.month:02d}月"


def format_day(value: date) -> str:
    return f"{value.year}年{value.month:02d}月{value.day:02d}日"


def document_fields(doc: CertificateDocument) -> list[Field]:
    """Return the labelled fields of `doc` in the order the document prints them."""
    kind = doc.layout.document_kind.code
    id_label = "证件号码" if doc.id_type == DEFAULT_ID_TYPE else f"证件号码（{doc.id_type}）"
    fields = [
        Field("姓名", doc.name),
        Field("性别", doc.gender),
        Field(id_label, doc.id_number),
        Field("出生年月", format_month(doc.birth_month)),
    ]
    if kind == PASS_KIND:
        specialty_label = "专业" if doc.layout.code == TITLE_PASS_LAYOUT else "专业名称"
        fields.append(Field(specialty_label, doc.specialty))
        fields.append(Field("批准日期", format_day(doc.approval_date)))
        fields.append(Field("编号", doc.number))
        return fields
    fields.append(Field("考试名称", doc.exam))
    fields.append(Field("专业", doc.specialty))
    if kind == TITLE_KIND and doc.level:
        fields.append(Field("级别", doc.level))
    fields.append(Field("批准日期", format_day(doc.approval_date)))
    fields.append(Field("证书编号", doc.number))
    return fields


def fill_statement(doc: CertificateDocument) -> str:
    # Plain replacement rather than str.format, so a stray brace typed into
    # the catalogue by staff prints as itself instead of raising.
    statement = doc.layout.statement
    for placeholder, value in (
        ("{exam}", doc.exam),
        ("{specialty}", doc.specialty),
        ("{issuer}", doc.layout.document_kind.issuer),
    ):
        statement = statement.replace(placeholder, value)
    return statement


def check_glyphs(doc: CertificateDocument, *, static_dir: Path) -> None:
    """Raise MissingGlyphError for the first character of `doc` no shipped font covers."""
    layout = doc.layout
    texts = [(field.label, field.value) for field in document_fields(doc)]
    texts += [
        ("证件类型", doc.id_type),
        ("标题", layout.title),
        ("证书说明", fill_statement(doc)),
        ("发证机关", layout.document_kind.issuer),
        ("印章编码", layout.document_kind.seal.code),
        ("查验网址", doc.lookup_url),
    ]
    texts += [("联合发证机关", name) for name in layout.co_issuers]
    for label, text in texts:
        missing = missing_glyphs(text, static_dir)
        if missing:
            raise MissingGlyphError(label, missing[0])


def qr_png(data: str) -> bytes:
    """Encode `data` as a QR code PNG: error correction M, 4-module quiet zone."""
    code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, box_size=QR_MODULE_PX, border=4)
    code.add_data(data)
    code.make(fit=True)
    modules = code.modules_count + 2 * code.border
    if QR_PRINT_MM / modules < QR_MIN_MODULE_MM:
        # NOTE: the QR code keeps its printed size, so a very long URL gives
        # modules a phone may not resolve; keep qr_url short.
        logger.warning("QR code has %s modules, %.2f mm each at %s mm", modules, QR_PRINT_MM / modules, QR_PRINT_MM)
    image = code.make_image(fill_color="black", back_color="white").get_image().convert("L")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def make_link_callback(static_dir: Path, instance_dir: Path | None) -> Callable[[str, str | None], str]:
    """Build an xhtml2pdf link_callback that resolves only data: URIs and files in static/ or instance/.

    `static/x` and `/static/x` resolve inside `static_dir`, `instance/x` and
    `/instance/x` inside `instance_dir`. Anything else, including file:// and
    http(s) URLs, raises ResourceRejectedError, because a callback that returns
    nothing makes xhtml2pdf fetch the original URI.
    """
    roots = {"static": static_dir.resolve()}
    if instance_dir is not None:
        roots["instance"] = instance_dir.resolve()

    def link_callback(uri: str, rel: str | None = None) -> str:
        if uri.startswith("data:"):
            return uri
        prefix, _, rest = uri.lstrip("/").partition("/")
        root = roots.get(prefix)
        if root is not None and "://" not in uri and rest:
            path = (root / rest).resolve()
            if path.is_relative_to(root) and path.is_file():
                return str(path)
        raise ResourceRejectedError(f"证书模板引用了不允许的资源：{uri[:80]}（只能使用 static/、instance/ 下的文件或 data: URI）")

    return link_callback


class RenderError(RuntimeError):
    """xhtml2pdf failed, or the document did not fit on one page."""


@lru_cache(maxsize=4)
def template_environment(template_dir: Path = TEMPLATE_DIR) -> Environment:
    environment = Environment(
        loader=FileSystemLoader(str(template_dir)),
        autoescape=True,
        undefined=StrictUndefined,
    )
    environment.filters["fontrun"] = fontrun
    return environment


@lru_cache(maxsize=1)
def default_css(template_dir: Path = TEMPLATE_DIR) -> str:
    """Return the trimmed default stylesheet the certificate templates are drawn with."""
    return (template_dir / "_default.css").read_text(encoding="utf-8")


def seal_uri(seal, *, static_dir: Path, instance_dir: Path | None) -> str:
    """Return the seal image as an instance/ path the link_callback resolves, or as a data URI without one."""
    if instance_dir is None:
        return png_data_uri(seal_png(seal, static_dir=static_dir, instance_dir=None))
    path = seal_render_path(seal, static_dir=static_dir, instance_dir=instance_dir)
    return "instance/" + path.relative_to(instance_dir).as_posix()


def template_context(doc: CertificateDocument, *, static_dir: Path, instance_dir: Path | None) -> dict[str, object]:
    layout = doc.layout
    seal = layout.document_kind.seal
    return {
        "primary_font": PRIMARY_FONT,
        "title": layout.title,
        "kind_name": layout.document_kind.name,
        "statement": fill_statement(doc),
        "fields": document_fields(doc),
        "issuers": [layout.document_kind.issuer, *layout.co_issuers],
        "approval_date": format_day(doc.approval_date),
        "seal_uri": seal_uri(seal, static_dir=static_dir, instance_dir=instance_dir),
        "seal_code": seal.code,
        "qr_uri": png_data_uri(qr_png(doc.qr_url)),
        "qr_size_mm": QR_PRINT_MM,
        "lookup_url": doc.lookup_url,
    }


def render_html(doc: CertificateDocument, *, static_dir: Path, instance_dir: Path | None = None) -> str:
    """Render the layout template of `doc` to the HTML that xhtml2pdf draws."""
    register_fonts(static_dir)
    template = template_environment().get_template(f"{doc.layout.code}.html")
    return template.render(template_context(doc, static_dir=static_dir, instance_dir=instance_dir))


def render_pdf(doc: CertificateDocument, *, static_dir: Path, instance_dir: Path | None = None) -> bytes:
    """Render `doc` as a one-page A4 PDF in its layout.

    Raises MissingGlyphError before any drawing when a field has a character
    no shipped font covers, and RenderError when xhtml2pdf fails or the
    result is not exactly one page.
    """
    register_fonts(static_dir)
    check_glyphs(doc, static_dir=static_dir)
    html = render_html(doc, static_dir=static_dir, instance_dir=instance_dir)
    started = time.perf_counter()
    pdf = _html_to_pdf(html, doc, static_dir=static_dir, instance_dir=instance_dir)
    _check_one_page(pdf, doc.number)
    logger.info("rendered %s in layout %s in %.0f ms", doc.number, doc.layout.code,
                (time.perf_counter() - started) * 1000)
    return pdf


def _html_to_pdf(html: str, doc: CertificateDocument, *, static_dir: Path, instance_dir: Path | None) -> bytes:
    roots = (instance_dir.resolve(),) if instance_dir is not None else ()
    # The policy confines what xhtml2pdf itself opens and forbids the network,
    # so a path that reaches xhtml2pdf without the link_callback is still confined.
    policy = ResourceAccessPolicy(allow_remote=False, base_dir=static_dir.resolve(), extra_roots=roots)
    output = io.BytesIO()
    result = pisa.CreatePDF(
        html,
        dest=output,
        default_css=default_css(),
        link_callback=make_link_callback(static_dir, instance_dir),
        resource_policy=policy,
        encoding="utf-8",
        # -1 keeps the source in memory: by default xhtml2pdf 0.2.28 spills a
        # source over 100 KB (ours carries the seal PNG) to a temporary file
        # that it never closes.
        capacity=-1,
        context_meta={"title": doc.layout.title, "author": doc.layout.document_kind.issuer},
    )
    if result.err:
        raise RenderError(f"证书 {doc.number} 生成 PDF 失败（{result.err} 个错误）")
    return output.getvalue()


def _check_one_page(pdf: bytes, number: str) -> None:
    pages = len(PdfReader(io.BytesIO(pdf)).pages)
    if pages != 1:
        raise RenderError(f"证书 {number} 排版为 {pages} 页，应为 1 页")
