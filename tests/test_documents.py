"""Certificate PDFs: rendered for real, read back with pypdf, rasterised with pypdfium2."""

from __future__ import annotations

import io
import re
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import pypdfium2
import pytest
import zxingcpp
from PIL import Image
from pypdf import PdfReader
from reportlab.pdfbase import pdfmetrics

from app.domain import fonts
from app.domain.catalogue import KIND_CERTIFICATE, KIND_PASS, Seal
from app.domain.documents import (
    CertificateDocument,
    MissingGlyphError,
    ResourceRejectedError,
    document_fields,
    fill_statement,
    make_link_callback,
    render_pdf,
)
from app.domain.seals import flatten_alpha, seal_png
from app.domain.seed import build_catalogue

PROJECT_DIR = Path(__file__).resolve().parents[1]
STATIC_DIR = PROJECT_DIR / "static"
CATALOGUE = build_catalogue()
LAYOUT_CODES = sorted(CATALOGUE.layouts)
A4_POINTS = (595.28, 841.89)
RENDER_DPI = 200
MM_PER_INCH = 25.4

# Page areas in millimetres (left, top, right, bottom), matching the frames in
# templates/certificates/_base.html.
SEAL_AREA_MM = (120, 200, 164, 242)
DATE_AREA_MM = (110, 215, 174, 224)


def sample_document(layout_code: str, **changes: object) -> CertificateDocument:
    """Build a document in `layout_code` for an exam and specialty that the catalogue maps to it."""
    for exam in CATALOGUE.exams.values():
        for kind in (KIND_CERTIFICATE, KIND_PASS):
            for specialty in exam.specialties:
                if exam.layout_code(kind, specialty) == layout_code:
                    doc = CertificateDocument(
                        layout=CATALOGUE.layouts[layout_code],
                        number=f"CQ2024{len(layout_code):02d}0012345",
                        name="张晓明",
                        gender="男",
                        id_type="居民身份证",
                        id_number="50010119900101123X",
                        birth_month=date(1990, 1, 1),
                        exam=exam.name,
                        specialty=specialty,
                        level=exam.levels[1] if exam.levels else None,
                        approval_date=date(2024, 10, 18),
                        qr_url=f"https://zs.example.cn/v/{layout_code}-Xk39aQ7pLm",
                        lookup_url="https://zs.example.cn/verify",
                    )
                    return replace(doc, **changes)
    raise LookupError(f"no exam in the catalogue uses layout {layout_code}")


@pytest.fixture(scope="module")
def instance_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("instance")


@pytest.fixture(scope="module")
def rendered(instance_dir: Path) -> dict[str, bytes]:
    """One PDF per layout, rendered once for the whole module."""
    return {
        code: render_pdf(sample_document(code), static_dir=STATIC_DIR, instance_dir=instance_dir)
        for code in LAYOUT_CODES
    }


def page_text(pdf: bytes) -> str:
    return PdfReader(io.BytesIO(pdf)).pages[0].extract_text()


def render_page(pdf: bytes, dpi: int = RENDER_DPI) -> Image.Image:
    document = pypdfium2.PdfDocument(pdf)
    try:
        return document[0].render(scale=dpi / 72).to_pil().convert("RGB")
    finally:
        document.close()


def crop_mm(image: Image.Image, area: tuple[float, float, float, float], dpi: int = RENDER_DPI) -> Image.Image:
    return image.crop(tuple(round(value * dpi / MM_PER_INCH) for value in area))


def count_pixels(image: Image.Image, predicate) -> int:
    data = image.convert("RGB").tobytes()
    pixels = zip(data[0::3], data[1::3], data[2::3])
    return sum(1 for pixel in pixels if predicate(pixel))


def is_red(pixel: tuple[int, int, int]) -> bool:
    r, g, b = pixel
    return r > 150 and g < 110 and b < 110


def is_black(pixel: tuple[int, int, int]) -> bool:
    return max(pixel) < 70


def text_runs(pdf: bytes) -> list[tuple[str, str]]:
    """Return (text, BaseFont) for every piece of text drawn on the first page."""
    runs: list[tuple[str, str]] = []

    def visit(text, cm, tm, font_dict, font_size):
        if text.strip() and font_dict is not None:
            runs.append((text, str(font_dict["/BaseFont"])))

    PdfReader(io.BytesIO(pdf)).pages[0].extract_text(visitor_text=visit)
    return runs


def chain_font_by_face_name() -> dict[str, str]:
    """Map each chain font's PostScript face name to its registered name."""
    fonts.register_fonts(STATIC_DIR)
    mapping = {}
    for spec in fonts.FONT_CHAIN:
        face = pdfmetrics.getFont(spec.name).face
        mapping[(face.name + face.subfontNameX).decode("latin-1")] = spec.name
    return mapping


# --- every layout --------------------------------------------------------


@pytest.mark.parametrize("code", LAYOUT_CODES)
def test_layout_one_a4_page(rendered: dict[str, bytes], code: str) -> None:
    reader = PdfReader(io.BytesIO(rendered[code]))
    assert len(reader.pages) == 1
    box = reader.pages[0].mediabox
    assert float(box.width) == pytest.approx(A4_POINTS[0], abs=1)
    assert float(box.height) == pytest.approx(A4_POINTS[1], abs=1)


@pytest.mark.parametrize("code", LAYOUT_CODES)
def test_layout_text_complete(rendered: dict[str, bytes], code: str) -> None:
    doc = sample_document(code)
    text = page_text(rendered[code])
    layout = doc.layout
    expected = [
        layout.title,
        "电子证书",
        doc.name,
        doc.number,
        doc.specialty,
        layout.document_kind.issuer,
        *layout.co_issuers,
        "扫码查验",
        doc.lookup_url,
        layout.document_kind.seal.code,
        "2024年10月18日",
        "1990年01月",
    ]
    expected += [field.label for field in document_fields(doc)]
    for needle in expected:
        assert needle in text, f"{needle!r} missing from the {code} page"


@pytest.mark.parametrize("code", LAYOUT_CODES)
def test_layout_statement_filled(rendered: dict[str, bytes], code: str) -> None:
    doc = sample_document(code)
    text = "".join(page_text(rendered[code]).split())
    assert "{" not in text
    assert fill_statement(doc) in text


@pytest.mark.parametrize("code", LAYOUT_CODES)
def test_layout_fonts_embedded_subsets(rendered: dict[str, bytes], code: str) -> None:
    page = PdfReader(io.BytesIO(rendered[code])).pages[0]
    truetype = [font.get_object() for font in page["/Resources"]["/Font"].values()
                if font.get_object()["/Subtype"] == "/TrueType"]
    assert truetype, "no TrueType font on the page"
    for font in truetype:
        assert "/FontFile2" in font["/FontDescriptor"], f"{font['/BaseFont']} is not embedded"
        assert re.match(r"^/[A-Z]{6}\+", str(font["/BaseFont"])), f"{font['/BaseFont']} has no subset tag"


@pytest.mark.parametrize("code", LAYOUT_CODES)
def test_layout_text_only_in_chain_fonts(rendered: dict[str, bytes], code: str) -> None:
    # The standard-14 Helvetica that reportlab declares on each page must
    # draw nothing visible: every visible character needs an embedded font.
    faces = chain_font_by_face_name()
    for text, base_font in text_runs(rendered[code]):
        face = base_font.split("+", 1)[-1]
        assert face in faces, f"{text!r} is drawn in {base_font}"


@pytest.mark.parametrize("code", LAYOUT_CODES)
def test_layout_qr_decodes(rendered: dict[str, bytes], code: str) -> None:
    doc = sample_document(code)
    barcodes = zxingcpp.read_barcodes(render_page(rendered[code]), formats=zxingcpp.BarcodeFormat.QRCode)
    assert [barcode.text for barcode in barcodes] == [doc.qr_url]
    assert barcodes[0].ec_level == "M"


@pytest.mark.parametrize("code", LAYOUT_CODES)
def test_layout_qr_bottom_right(rendered: dict[str, bytes], code: str) -> None:
    barcode = zxingcpp.read_barcodes(render_page(rendered[code]))[0]
    corner = barcode.position.bottom_right
    dots_per_mm = RENDER_DPI / MM_PER_INCH
    assert corner.x / dots_per_mm > 170
    assert corner.y / dots_per_mm > 260


@pytest.mark.parametrize("code", LAYOUT_CODES)
def test_layout_qr_module_size(rendered: dict[str, bytes], code: str) -> None:
    barcode = zxingcpp.read_barcodes(render_page(rendered[code]))[0]
    width_mm = (barcode.position.top_right.x - barcode.position.top_left.x) * MM_PER_INCH / RENDER_DPI
    modules = 21 + 4 * (_qr_version(barcode) - 1)
    assert width_mm / modules >= 0.4, f"modules of {width_mm / modules:.2f} mm"


def _qr_version(barcode: zxingcpp.Barcode) -> int:
    # zxing-cpp 3 reports symbol details in `extra`, the version as a string.
    return int(barcode.extra["Version"])


@pytest.mark.parametrize("code", LAYOUT_CODES)
def test_layout_seal_red_not_box(rendered: dict[str, bytes], code: str) -> None:
    seal_area = crop_mm(render_page(rendered[code]), SEAL_AREA_MM)
    total = seal_area.width * seal_area.height
    assert count_pixels(seal_area, is_red) > total * 0.08, "seal ink is missing"
    assert count_pixels(seal_area, is_black) < total * 0.1, "seal area is mostly black"


@pytest.mark.parametrize("code", LAYOUT_CODES)
def test_layout_date_visible_over_seal(rendered: dict[str, bytes], code: str) -> None:
    date_area = crop_mm(render_page(rendered[code]), DATE_AREA_MM)
    assert count_pixels(date_area, is_black) > 500, "date text is hidden"
    assert count_pixels(date_area, is_red) > 500, "seal does not overlap the date"


# --- names and fonts -----------------------------------------------------

# 𪜀 (U+2A700, CJK Ext C) is in HanaMinB only, so it exercises the last font of the chain.
RARE_NAMES = ["王𠮷", "李堃", "陈喆", "刘䶮", "张𬌗", "赵𪜀", "阿依古丽·买买提", "SMITH JOHN"]


@pytest.mark.parametrize("name", RARE_NAMES)
def test_rare_name_extracts(instance_dir: Path, name: str) -> None:
    pdf = render_pdf(sample_document("qual_constructor", name=name), static_dir=STATIC_DIR, instance_dir=instance_dir)
    assert name in page_text(pdf)


@pytest.mark.parametrize("name", RARE_NAMES)
def test_rare_name_real_glyphs(instance_dir: Path, name: str) -> None:
    pdf = render_pdf(sample_document("pass_title", name=name), static_dir=STATIC_DIR, instance_dir=instance_dir)
    faces = chain_font_by_face_name()
    drawn = [(text, faces[base.split("+", 1)[-1]]) for text, base in text_runs(pdf)
             if any(char in name for char in text)]
    assert drawn, f"{name} not found among the drawn text"
    for text, font_name in drawn:
        for char in text.strip():
            assert fonts.font_covers(font_name, char), f"{char!r} drawn in {font_name}, which lacks it"


def test_non_bmp_to_unicode_entries(instance_dir: Path) -> None:
    pdf = render_pdf(sample_document("title_exam", name="王𠮷"), static_dir=STATIC_DIR, instance_dir=instance_dir)
    page = PdfReader(io.BytesIO(pdf)).pages[0]
    cmaps = [font.get_object()["/ToUnicode"].get_object().get_data()
             for font in page["/Resources"]["/Font"].values() if "/ToUnicode" in font.get_object()]
    # 𠮷 U+20BB7 is the surrogate pair D842 DFB7 in UTF-16BE.
    assert any(b"<D842DFB7>" in cmap for cmap in cmaps)
    assert not any(b"<20BB7>" in cmap for cmap in cmaps)


@pytest.mark.parametrize("char", ["\ue000", "\u0378", "\U00030000", "\U0010fffd"])
def test_uncovered_char_raises(instance_dir: Path, char: str) -> None:
    doc = sample_document("qual_safety", name=f"王{char}明")
    with pytest.raises(MissingGlyphError) as caught:
        render_pdf(doc, static_dir=STATIC_DIR, instance_dir=instance_dir)
    assert f"U+{ord(char):04X}" in str(caught.value)
    assert str(caught.value).startswith("姓名中的字符")


def test_missing_glyphs_lists_uncovered() -> None:
    assert fonts.missing_glyphs("王\ue000𠮷 A\ue000") == ["\ue000"]


def test_fontrun_escapes_markup() -> None:
    assert str(fonts.fontrun("<b>x</b>&")) == "&lt;b&gt;x&lt;/b&gt;&amp;"


def test_fontrun_wraps_fallback_run() -> None:
    assert str(fonts.fontrun("王𬌗𪜀")) == (
        '王<span style="font-family: HanaMinA">𬌗</span><span style="font-family: HanaMinB">𪜀</span>'
    )


def test_markup_in_name_literal(instance_dir: Path) -> None:
    pdf = render_pdf(sample_document("pass_cost", name="<b>x</b>"), static_dir=STATIC_DIR, instance_dir=instance_dir)
    assert "<b>x</b>" in page_text(pdf)


# --- fields --------------------------------------------------------------


def test_passport_labelled_id_type(instance_dir: Path) -> None:
    doc = sample_document("qual_cost_civil", id_type="护照", id_number="E12345678")
    pdf = render_pdf(doc, static_dir=STATIC_DIR, instance_dir=instance_dir)
    assert "证件号码（护照）" in page_text(pdf)


def test_resident_id_label_plain() -> None:
    labels = [field.label for field in document_fields(sample_document("qual_constructor"))]
    assert "证件号码" in labels


def test_title_exam_prints_level() -> None:
    labels = [field.label for field in document_fields(sample_document("title_exam"))]
    assert labels == ["姓名", "性别", "证件号码", "出生年月", "考试名称", "专业", "级别", "批准日期", "证书编号"]


def test_title_exam_without_level() -> None:
    labels = [field.label for field in document_fields(sample_document("title_exam", level=None))]
    assert "级别" not in labels


def test_pass_fields_order() -> None:
    labels = [field.label for field in document_fields(sample_document("pass_constructor"))]
    assert labels == ["姓名", "性别", "证件号码", "出生年月", "专业名称", "批准日期", "编号"]


def test_title_pass_specialty_label() -> None:
    labels = [field.label for field in document_fields(sample_document("pass_title"))]
    assert labels == ["姓名", "性别", "证件号码", "出生年月", "专业", "批准日期", "编号"]


def test_long_specialty_one_page(instance_dir: Path) -> None:
    specialty = "建筑工程与市政公用工程综合管理（含地下空间、轨道交通及城市综合管廊）" * 5
    doc = sample_document("qual_cost_water", specialty=specialty, name="阿依古丽·买买提" * 4)
    pdf = render_pdf(doc, static_dir=STATIC_DIR, instance_dir=instance_dir)
    text = "".join(page_text(pdf).split())
    assert len(PdfReader(io.BytesIO(pdf)).pages) == 1
    assert specialty[:20] in text
    assert specialty[-12:] in text


def test_warm_render_under_one_second(instance_dir: Path) -> None:
    doc = sample_document("qual_constructor")
    render_pdf(doc, static_dir=STATIC_DIR, instance_dir=instance_dir)
    started = time.perf_counter()
    render_pdf(doc, static_dir=STATIC_DIR, instance_dir=instance_dir)
    assert time.perf_counter() - started < 1.0


# --- resources and seals -------------------------------------------------


@pytest.mark.parametrize("uri", [
    "file:///etc/passwd",
    "http://example.com/seal.png",
    "https://example.com/seal.png",
    "/etc/passwd",
    "static/../app/domain/seed.py",
    "static/fonts/missing.ttf",
    "instance/seals/x.png",
])
def test_link_callback_rejects(uri: str) -> None:
    callback = make_link_callback(STATIC_DIR, None)
    with pytest.raises(ResourceRejectedError):
        callback(uri, None)


def test_link_callback_resolves_static() -> None:
    callback = make_link_callback(STATIC_DIR, None)
    assert callback("/static/fonts/README.md", None) == str(STATIC_DIR.resolve() / "fonts" / "README.md")


def test_link_callback_keeps_data_uri() -> None:
    callback = make_link_callback(STATIC_DIR, None)
    assert callback("data:image/png;base64,AAAA", None) == "data:image/png;base64,AAAA"


def test_specimen_cached_on_disk(tmp_path: Path) -> None:
    seal = Seal(code="5000000009999", name="重庆市测试专用章")
    png = seal_png(seal, static_dir=STATIC_DIR, instance_dir=tmp_path)
    cached = list((tmp_path / "seals").glob("specimen-5000000009999-*.png"))
    assert len(cached) == 1
    assert cached[0].read_bytes() == png


def test_specimen_red_with_alpha(tmp_path: Path) -> None:
    seal = Seal(code="5000000009998", name="重庆市测试专用章")
    image = Image.open(io.BytesIO(seal_png(seal, static_dir=STATIC_DIR, instance_dir=tmp_path)))
    assert image.mode == "RGBA"
    assert image.getpixel((0, 0)) == (255, 255, 255, 0)
    assert is_red(image.getpixel((image.width // 2, image.height // 2))[:3])


def palette_seal() -> Image.Image:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 200, 0, 0])
    image.info["transparency"] = 0  # index 0 is transparent black
    image.putpixel((1, 1), 1)
    return image


@pytest.mark.parametrize("source", [
    palette_seal(),
    Image.new("LA", (4, 4), (0, 0)),
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)),
], ids=["P", "LA", "RGBA"])
def test_flatten_alpha_white_background(source: Image.Image) -> None:
    image = flatten_alpha(source)
    assert image.mode == "RGBA"
    assert image.getpixel((0, 0))[:3] == (255, 255, 255)


def test_installed_seal_outside_instance(tmp_path: Path) -> None:
    seal = Seal(code="5000000009997", name="外部印章", image_path="../outside.png")
    with pytest.raises(ValueError, match="不在 instance 目录内"):
        seal_png(seal, static_dir=STATIC_DIR, instance_dir=tmp_path)


def test_installed_seal_flattened(tmp_path: Path) -> None:
    source = Image.new("LA", (50, 50), (0, 0))
    source.putpixel((25, 25), (80, 255))
    (tmp_path / "seals").mkdir()
    source.save(tmp_path / "seals" / "official.png")
    seal = Seal(code="5000000009996", name="正式印章", image_path="seals/official.png")
    image = Image.open(io.BytesIO(seal_png(seal, static_dir=STATIC_DIR, instance_dir=tmp_path)))
    assert image.mode == "RGBA"
    assert image.getpixel((0, 0)) == (255, 255, 255, 0)
