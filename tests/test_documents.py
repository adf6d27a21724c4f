"""Certificate PDFs: rendered for real, read back with pypdf, rasterised with pypdfium2."""

from __future__ import annotations

import io
import math
import re
import shutil
import subprocess
import time as time_module
import zipfile
from dataclasses import replace
from datetime import date
from pathlib import Path

import pypdfium2
import pytest
import zxingcpp
from PIL import Image, ImageChops
from pypdf import PdfReader
from reportlab.pdfbase import pdfdoc, pdfmetrics
from sqlalchemy import select as sa_select
from xhtml2pdf.util import ImageWarning
from xhtml2pdf.xhtml2pdf_reportlab import PmlImageReader

from app.domain import fonts, image_reuse
from app.domain.catalogue import KIND_CERTIFICATE, KIND_PASS, Seal
from app.domain.documents import (
    CertificateDocument,
    MissingGlyphError,
    ResourceRejectedError,
    document_fields,
    fill_statement,
    QR_MODULE_PX,
    make_link_callback,
    qr_png,
    render_pdf,
)
from app.domain.seals import (
    SEAL_RENDER_MAX_PX,
    SEAL_TEXT_ARC_DEGREES,
    arc_angles,
    draw_specimen,
    flatten_alpha,
    render_png,
    seal_png,
    seal_render_path,
)
from app.domain.seed import build_catalogue

from .test_backup import restore_target  # noqa: F401 - fixture for the restore test

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
def test_layout_fonts_only_project_fonts(rendered: dict[str, bytes], code: str) -> None:
    # Every font resource, drawn with or not: reportlab lists its default font,
    # Helvetica, on pages that never draw with it unless register_fonts changes it.
    faces = chain_font_by_face_name()
    page = PdfReader(io.BytesIO(rendered[code])).pages[0]
    fonts_on_page = [font.get_object() for font in page["/Resources"]["/Font"].values()]
    assert fonts_on_page, "the page has no font resources"
    for font in fonts_on_page:
        base_font = str(font["/BaseFont"]).lstrip("/")
        assert base_font.split("+", 1)[-1] in faces, f"{base_font} is not a shipped font"
        assert "/FontFile2" in font["/FontDescriptor"], f"{base_font} is not embedded"


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


# The name's characters lie in this band of the specimen, as fractions of
# its size: inside the ring, outside the star.
NAME_BAND = (0.31, 0.44)
# Angles, clockwise from 3 o'clock, that hold the 样章 mark below the star.
MARK_ANGLES = (35.0, 145.0)


def name_ink_angles(image: Image.Image) -> list[int]:
    """Return the whole-degree angles of the specimen's name ink, from -270 up to 90 so the top arc is contiguous."""
    alpha = image.getchannel("A")
    size = image.width
    centre = size / 2
    angles = set()
    for y in range(size):
        for x in range(size):
            if alpha.getpixel((x, y)) < 128:
                continue
            dx, dy = x + 0.5 - centre, y + 0.5 - centre
            if not NAME_BAND[0] * size <= math.hypot(dx, dy) <= NAME_BAND[1] * size:
                continue
            angle = math.degrees(math.atan2(dy, dx))
            if MARK_ANGLES[0] < angle < MARK_ANGLES[1]:
                continue
            angles.add(round(angle - 360 if angle >= 90 else angle))
    return sorted(angles)


def ink_clusters(angles: list[int], max_gap: int = 4) -> list[tuple[int, int]]:
    """Group sorted angles into (first, last) runs whose gaps are at most `max_gap` degrees."""
    clusters = [[angles[0], angles[0]]]
    for angle in angles[1:]:
        if angle - clusters[-1][1] <= max_gap:
            clusters[-1][1] = angle
        else:
            clusters.append([angle, angle])
    return [tuple(cluster) for cluster in clusters]


@pytest.mark.parametrize("name", ["人事中心", "重庆市人事考试中心"])
def test_specimen_name_evenly_spaced(name: str) -> None:
    image = draw_specimen(name, font_file=STATIC_DIR / "fonts" / "wqy-zenhei.ttc")
    clusters = ink_clusters(name_ink_angles(image))
    assert len(clusters) == len(name), f"expected {len(name)} characters on the ring, found {clusters}"

    centres = [(first + last) / 2 for first, last in clusters]
    gaps = [later - earlier for earlier, later in zip(centres, centres[1:])]
    expected_gap = SEAL_TEXT_ARC_DEGREES / (len(name) - 1)
    for gap in gaps:
        assert gap == pytest.approx(expected_gap, abs=3), f"characters at {centres} are not evenly spaced"
    assert (centres[0] + centres[-1]) / 2 == pytest.approx(-90, abs=3), "the name is not centred on the top"


@pytest.mark.parametrize("name", ["人事中心", "重庆市人事考试中心", "重庆市人力资源和社会保障局专业技术人员职业资格证书专用章"])
def test_specimen_name_fixed_arc(name: str) -> None:
    # From the far edge of the first character to that of the last: the arc
    # plus one character's width, which is at most about 15 degrees.
    angles = name_ink_angles(draw_specimen(name, font_file=STATIC_DIR / "fonts" / "wqy-zenhei.ttc"))
    extent = angles[-1] - angles[0]
    assert SEAL_TEXT_ARC_DEGREES <= extent <= SEAL_TEXT_ARC_DEGREES + 16, f"name spans {extent} degrees"


def test_arc_angles_single_character() -> None:
    assert arc_angles(1) == [-90.0]


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


# --- positions on the page ----------------------------------------------

PAGE_HEIGHT_PT = A4_POINTS[1]
MM_PER_POINT = MM_PER_INCH / 72
# Frames of templates/certificates/_base.html, in mm (left, top, right, bottom).
CONTENT_BOX_MM = (20, 30, 190, 196)
ISSUER_BOX_MM = (92, 190, 192, 215)
SEAL_FRAME_MM = (118, 199, 166, 251)
SEAL_IMAGE_MM = 42  # printed size of the seal, at the top of its frame
QR_FRAME_MM = (158, 247, 190, 283)
LOOKUP_FRAME_MM = (20, 254, 148, 280)
MIN_MARGIN_MM = 10
LABEL_COLUMN_RIGHT_MM = 20 + 42  # content frame left edge plus the label cell width


def char_boxes(pdf: bytes) -> list[tuple[str, tuple[float, float, float, float]]]:
    """Return every character on the page with its box in mm from the top-left corner."""
    document = pypdfium2.PdfDocument(pdf)
    try:
        text_page = document[0].get_textpage()
        boxes = []
        for index in range(text_page.count_chars()):
            char = text_page.get_text_range(index, 1)
            left, bottom, right, top = text_page.get_charbox(index)
            boxes.append((char, (left * MM_PER_POINT, (PAGE_HEIGHT_PT - top) * MM_PER_POINT,
                                 right * MM_PER_POINT, (PAGE_HEIGHT_PT - bottom) * MM_PER_POINT)))
        return boxes
    finally:
        document.close()


def find_text(boxes, text: str) -> list[tuple[float, float, float, float]]:
    """Return the boxes of the first occurrence of `text`, ignoring line breaks and spaces."""
    visible = [(char, box) for char, box in boxes if char.strip()]
    wanted = "".join(text.split())
    joined = "".join(char for char, _ in visible)
    start = joined.find(wanted)
    assert start >= 0, f"{text!r} not found on the page"
    return [box for _, box in visible[start:start + len(wanted)]]


def inside(box: tuple[float, float, float, float], area: tuple[float, float, float, float], slack: float = 0.5) -> bool:
    left, top, right, bottom = box
    return (left >= area[0] - slack and top >= area[1] - slack
            and right <= area[2] + slack and bottom <= area[3] + slack)


LONG_SPECIALTY = "水利工程建设与管理（含农村饮水安全工程、中小河流治理、山洪灾害防治及水土保持综合治理）" * 2
LONG_EXAM = "二级造价工程师职业资格考试（水利工程专业方向）" * 2
LONG_ISSUER = "重庆市人力资源和社会保障局与重庆市水利局及重庆市交通运输委员会联合考试办公室"


@pytest.fixture(scope="module")
def long_names_pdf(instance_dir: Path) -> bytes:
    doc = sample_document("qual_cost_water", specialty=LONG_SPECIALTY, exam=LONG_EXAM)
    kind = replace(doc.layout.document_kind, issuer=LONG_ISSUER)
    doc = replace(doc, layout=replace(doc.layout, document_kind=kind))
    return render_pdf(doc, static_dir=STATIC_DIR, instance_dir=instance_dir)


@pytest.mark.parametrize(("text", "area"), [
    (LONG_SPECIALTY, CONTENT_BOX_MM),
    (LONG_EXAM, CONTENT_BOX_MM),
    (LONG_ISSUER, ISSUER_BOX_MM),
], ids=["specialty", "exam", "issuer"])
def test_long_text_wraps_inside_box(long_names_pdf: bytes, text: str, area) -> None:
    boxes = find_text(char_boxes(long_names_pdf), text)
    lines = {round(box[1]) for box in boxes}
    assert len(lines) > 1, "long text was not wrapped"
    for box in boxes:
        assert inside(box, area), f"character at {box} leaves the box {area}"


def test_long_names_one_page(long_names_pdf: bytes) -> None:
    assert len(PdfReader(io.BytesIO(long_names_pdf)).pages) == 1


# --- line breaking (kinsoku) ---------------------------------------------

# Closing punctuation that a Chinese line must not start with.
CLOSING_PUNCTUATION = "，。、；：？！）》」』】”’"
KINSOKU_CLAUSE = "持证人应当遵守国家有关法律法规"  # 15 characters, so a comma every 16
KINSOKU_PREFIX = "甲乙丙丁戊己庚辛壬癸子丑寅卯辰巳"  # shifts the commas through every offset


def line_starts(boxes: list[tuple[float, float, float, float]], text: str) -> list[str]:
    """Return the first character of each printed line of `text`, given its character boxes in order."""
    visible = "".join(text.split())
    starts = [visible[0]]
    for index in range(1, len(boxes)):
        if boxes[index][1] > boxes[index - 1][3]:  # top below the previous bottom: a new line
            starts.append(visible[index])
    return starts


@pytest.mark.parametrize("offset", range(len(KINSOKU_PREFIX)))
def test_no_line_starts_with_closing_punctuation(instance_dir: Path, offset: int) -> None:
    # reportlab's dumbSplit breaks the statement, which is one text run. The
    # specialty starts with 鿏 (U+9FCF), which only HanaMinA has, so it is
    # several runs and xhtml2pdf's cjkFragSplit breaks it.
    body = KINSOKU_PREFIX[:offset] + "，".join([KINSOKU_CLAUSE] * 8) + "。"
    statement = body + "特此证明。"
    specialty = "鿏" + body
    doc = sample_document("qual_constructor", specialty=specialty)
    doc = replace(doc, layout=replace(doc.layout, statement=statement))
    boxes = char_boxes(render_pdf(doc, static_dir=STATIC_DIR, instance_dir=instance_dir))
    for text in (statement, specialty):
        starts = line_starts(find_text(boxes, text), text)
        assert len(starts) > 2, "the text was not wrapped onto several lines"
        bad = [char for char in starts[1:] if char in CLOSING_PUNCTUATION]
        assert not bad, f"a line of {text[:12]!r}… starts with {bad}"


def test_line_starts_detects_punctuation() -> None:
    # Two characters on one line, then a comma on the next one.
    boxes = [(0, 0, 4, 4), (4, 0, 8, 4), (0, 6, 4, 10)]
    assert line_starts(boxes, "甲乙，") == ["甲", "，"]


@pytest.mark.parametrize("code", LAYOUT_CODES)
def test_layout_fields_in_order(rendered: dict[str, bytes], code: str) -> None:
    # Only the label column of the field table, so a label word in the title does not count.
    boxes = [(char, box) for char, box in char_boxes(rendered[code]) if box[2] < LABEL_COLUMN_RIGHT_MM]
    tops = [find_text(boxes, field.label)[0][1] for field in document_fields(sample_document(code))]
    assert tops == sorted(tops), "field labels are not printed top to bottom in document order"


@pytest.mark.parametrize("code", LAYOUT_CODES)
def test_layout_seal_code_under_seal(rendered: dict[str, bytes], code: str) -> None:
    boxes = find_text(char_boxes(rendered[code]), "印章编码")
    assert boxes[0][1] > SEAL_FRAME_MM[1] + SEAL_IMAGE_MM, "印章编码 is not below the seal image"
    assert inside(boxes[0], SEAL_FRAME_MM)


@pytest.mark.parametrize("code", LAYOUT_CODES)
def test_layout_qr_caption_and_address(rendered: dict[str, bytes], code: str) -> None:
    boxes = char_boxes(rendered[code])
    caption = find_text(boxes, "扫码查验")
    address = find_text(boxes, sample_document(code).lookup_url)
    assert all(inside(box, QR_FRAME_MM) for box in caption)
    assert all(inside(box, LOOKUP_FRAME_MM) for box in address)
    assert address[-1][2] < QR_FRAME_MM[0], "lookup address is not beside (left of) the QR code"


@pytest.mark.parametrize("code", LAYOUT_CODES)
def test_layout_margins_blank(rendered: dict[str, bytes], code: str) -> None:
    page = render_page(rendered[code], dpi=100).convert("L")
    margin = round(MIN_MARGIN_MM * 100 / MM_PER_INCH) - 1
    width, height = page.size
    for strip in [(0, 0, width, margin), (0, height - margin, width, height),
                  (0, 0, margin, height), (width - margin, 0, width, height)]:
        assert page.crop(strip).getextrema()[0] > 245, f"ink within {MIN_MARGIN_MM} mm of the edge in {strip}"


@pytest.mark.parametrize("code", LAYOUT_CODES)
def test_layout_qr_quiet_zone(rendered: dict[str, bytes], code: str) -> None:
    image = render_page(rendered[code])
    barcode = zxingcpp.read_barcodes(image, formats=zxingcpp.BarcodeFormat.QRCode)[0]
    position = barcode.position
    module_px = (position.top_right.x - position.top_left.x) / (21 + 4 * (_qr_version(barcode) - 1))
    quiet = 4 * module_px
    left, top = position.top_left.x, position.top_left.y
    right, bottom = position.bottom_right.x, position.bottom_right.y
    ring = image.convert("L")
    # The 4-module band around the symbol, less one module of antialiasing at the edges.
    for strip in [(left - quiet + 1, top - quiet + 1, left - module_px, bottom + quiet - 1),
                  (right + module_px, top - quiet + 1, right + quiet - 1, bottom + quiet - 1),
                  (left - quiet + 1, top - quiet + 1, right + quiet - 1, top - module_px),
                  (left - quiet + 1, bottom + module_px, right + quiet - 1, bottom + quiet - 1)]:
        box = tuple(round(value) for value in strip)
        assert ring.crop(box).getextrema()[0] > 200, f"quiet zone not blank in {box}"


def test_qr_png_whole_pixel_modules() -> None:
    png = Image.open(io.BytesIO(qr_png("https://zs.example.cn/v/abc")))
    assert png.width % QR_MODULE_PX == 0
    modules = png.width // QR_MODULE_PX
    # Every module is a flat QR_MODULE_PX square: no resampling blurred it.
    for row in range(modules):
        for column in range(modules):
            cell = png.crop((column * QR_MODULE_PX, row * QR_MODULE_PX,
                             (column + 1) * QR_MODULE_PX, (row + 1) * QR_MODULE_PX))
            low, high = cell.getextrema()
            assert low == high, f"module ({row}, {column}) is not one flat colour"


def test_qr_png_quiet_zone_four_modules() -> None:
    png = Image.open(io.BytesIO(qr_png("https://zs.example.cn/v/abc"))).convert("L")
    band = 4 * QR_MODULE_PX
    assert png.crop((0, 0, png.width, band)).getextrema() == (255, 255)
    assert png.crop((0, 0, band, png.height)).getextrema() == (255, 255)


# --- rare names through pdftotext ----------------------------------------

PDFTOTEXT = shutil.which("pdftotext")


@pytest.mark.skipif(PDFTOTEXT is None, reason="pdftotext (Debian poppler-utils) is not installed")
@pytest.mark.parametrize("name", ["王𠮷", "李堃", "陈喆", "刘䶮", "张𬌗", "赵𪜀"])
def test_rare_name_pdftotext(instance_dir: Path, tmp_path: Path, name: str) -> None:
    pdf_path = tmp_path / "rare.pdf"
    pdf_path.write_bytes(render_pdf(sample_document("qual_constructor", name=name),
                                    static_dir=STATIC_DIR, instance_dir=instance_dir))
    result = subprocess.run([PDFTOTEXT, "-enc", "UTF-8", str(pdf_path), "-"],
                            capture_output=True, check=True, timeout=60)
    assert name in result.stdout.decode("utf-8")


# --- seal image reused across documents ----------------------------------


def test_seal_encoded_once_per_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seal = sample_document("qual_safety").layout.document_kind.seal
    render_path = seal_render_path(seal, static_dir=STATIC_DIR, instance_dir=tmp_path)
    with Image.open(render_path) as source:
        expected = source.convert("RGBA")
    image_reuse.ReusedImageXObject._encoded.clear()
    render_pdf(sample_document("qual_safety"), static_dir=STATIC_DIR, instance_dir=tmp_path)

    encoded_sizes = []
    original = pdfdoc.PDFImageXObject.loadImageFromSRC

    def record(self, image):
        encoded_sizes.append(image.getSize())
        return original(self, image)

    monkeypatch.setattr(pdfdoc.PDFImageXObject, "loadImageFromSRC", record)
    pdf = render_pdf(sample_document("qual_safety", name="李四", qr_url="https://zs.example.cn/v/other-Xk39aQ7pLm"),
                     static_dir=STATIC_DIR, instance_dir=tmp_path)

    assert expected.size not in encoded_sizes, "the seal was encoded again"
    # The QR code is new, so an empty list would mean the spy is not called.
    assert encoded_sizes, "the new QR code was not encoded"
    images = PdfReader(io.BytesIO(pdf)).pages[0].images
    drawn = max(images, key=lambda image: image.image.width).image.convert("RGBA")
    assert drawn.size == expected.size
    assert ImageChops.difference(drawn, expected).getbbox() is None, "the reused seal differs from its file"


def test_render_copy_scaled_down() -> None:
    large = seal_source("RGBA").resize((1200, 1200))
    with Image.open(io.BytesIO(render_png(png_bytes(large)))) as image:
        assert image.size == (SEAL_RENDER_MAX_PX, SEAL_RENDER_MAX_PX)
        assert image.mode == "RGBA"
        assert image.getpixel((0, 0)) == (255, 255, 255, 0), "transparent pixels are not white"


def test_render_copy_keeps_specimen_pixels(tmp_path: Path) -> None:
    seal = Seal(code="5000000009997", name="重庆市测试专用章")
    png = seal_png(seal, static_dir=STATIC_DIR, instance_dir=tmp_path)
    with Image.open(io.BytesIO(png)) as original, Image.open(io.BytesIO(render_png(png))) as copy:
        assert ImageChops.difference(original.convert("RGBA"), copy.convert("RGBA")).getbbox() is None


def test_image_decode_checked_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    png = png_bytes(seal_source("RGBA"))
    checked = []

    def record(reader, where):
        checked.append(where)

    monkeypatch.setattr(image_reuse, "_XHTML2PDF_DECODE", record)
    image_reuse._decoded.clear()
    PmlImageReader(io.BytesIO(png))
    PmlImageReader(io.BytesIO(png))
    assert len(checked) == 1, "equal bytes were checked twice"
    PmlImageReader(io.BytesIO(png_bytes(seal_source("LA"))))
    assert len(checked) == 2, "new bytes were not checked"


def test_truncated_image_still_rejected() -> None:
    png = png_bytes(seal_source("RGBA"))
    with pytest.raises(ImageWarning):
        PmlImageReader(io.BytesIO(png[: len(png) // 2]))


# --- installed seal images of every PNG mode -----------------------------


def seal_source(mode: str) -> Image.Image:
    """Build a 300 px red ring on a transparent background in `mode`."""
    rgba = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    from PIL import ImageDraw

    ImageDraw.Draw(rgba).ellipse((10, 10, 290, 290), outline=(210, 20, 20, 255), width=40)
    ImageDraw.Draw(rgba).rectangle((110, 110, 190, 190), fill=(210, 20, 20, 255))
    if mode == "RGBA":
        return rgba
    if mode == "LA":
        # Grey ink: the test then checks dark-grey, not red, so LA keeps its own colour.
        return rgba.convert("LA")
    palette = rgba.convert("RGB").quantize(colors=4)
    transparent_index = palette.getpixel((0, 0))
    palette.info["transparency"] = transparent_index
    return palette


def is_ink(pixel: tuple[int, int, int]) -> bool:
    return min(pixel) < 200 and not is_black(pixel)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_installed_seal_mode_renders(tmp_path: Path, mode: str) -> None:
    (tmp_path / "seals").mkdir()
    seal_source(mode).save(tmp_path / "seals" / f"official-{mode}.png")
    doc = sample_document("qual_constructor")
    seal = Seal(code="5000000000101", name="正式印章", image_path=f"seals/official-{mode}.png")
    kind = replace(doc.layout.document_kind, seal=seal)
    doc = replace(doc, layout=replace(doc.layout, document_kind=kind))
    page = render_page(render_pdf(doc, static_dir=STATIC_DIR, instance_dir=tmp_path))
    seal_area = crop_mm(page, SEAL_AREA_MM)
    total = seal_area.width * seal_area.height
    # The lower-left corner of the seal image, outside the ring and below the issuer lines.
    corner = crop_mm(page, (121.5, 237, 124, 240))
    assert count_pixels(seal_area, is_black) < total * 0.1, "seal area is mostly black"
    assert count_pixels(corner, lambda pixel: min(pixel) > 240) == corner.width * corner.height, \
        "transparent seal corner is not white"
    if mode == "LA":
        assert count_pixels(seal_area, is_ink) > total * 0.05, "grey seal ink is missing"
    else:
        assert count_pixels(seal_area, is_red) > total * 0.05, "red seal ink is missing"


# --- admin: seals ----------------------------------------------------------

FAULTY_ROSTER = "二级建造师_问题数据样例.xlsx"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def restore_seals(app):
    """Put the seeded seal codes and images back after a test changes them."""
    from app.models import Seal as SealRow
    from app.extensions import db

    with app.app_context():
        saved = {row.id: (row.code, row.image_path) for row in db.session.scalars(sa_select(SealRow))}
    yield
    with app.app_context():
        for row in db.session.scalars(sa_select(SealRow)):
            row.code, row.image_path = saved[row.id]
        db.session.commit()


def first_seal_id(app) -> int:
    from app.models import Seal as SealRow
    from app.extensions import db

    with app.app_context():
        return db.session.scalar(sa_select(SealRow.id).order_by(SealRow.id))


def post_seal(client, seal_id: int, code: str, image: bytes | None = None):
    from .conftest import csrf_token

    page = client.get("/admin/seals").get_data(as_text=True)
    data = {f"seal{seal_id}-code": code, "csrf_token": csrf_token(page)}
    if image is not None:
        data[f"seal{seal_id}-image"] = (io.BytesIO(image), "seal.png")
    return client.post(f"/admin/seals/{seal_id}", data=data, content_type="multipart/form-data")


def test_seals_page_lists_specimens(staff_client) -> None:
    html = staff_client.get("/admin/seals").get_data(as_text=True)
    assert "样章" in html
    assert "5000000000101" in html


@pytest.mark.parametrize("role", ["operator", "auditor"])
def test_seals_page_admin_only(login_staff, role: str) -> None:
    client = login_staff(f"seal-{role}", role)
    assert client.get("/admin/seals").status_code == 403


def test_seal_preview_png(app, staff_client) -> None:
    response = staff_client.get(f"/admin/seals/{first_seal_id(app)}/preview.png")
    assert response.status_code == 200
    assert Image.open(io.BytesIO(response.data)).mode == "RGBA"


def test_seal_install_image_and_code(app, staff_client, restore_seals) -> None:
    from app.extensions import db
    from app.models import AuditEntry
    from app.models import Seal as SealRow

    seal_id = first_seal_id(app)
    response = post_seal(staff_client, seal_id, "5000000000109", png_bytes(seal_source("P")))
    assert response.status_code == 303
    with app.app_context():
        row = db.session.get(SealRow, seal_id)
        actions = db.session.scalars(sa_select(AuditEntry.action).where(AuditEntry.target == f"seal:{seal_id}")).all()
        stored = Path(app.instance_path) / row.image_path
    assert row.code == "5000000000109"
    assert row.image_path.startswith("seals/official-")
    assert stored.is_file()
    assert sorted(actions) == ["seal.code", "seal.image"]


@pytest.mark.parametrize(("code", "image", "message"), [
    ("123", None, "13 位数字"),
    ("50000000001O1", None, "13 位数字"),
    ("5000000000202", None, "已被另一枚印章使用"),
    ("5000000000101", b"GIF89a not a png", "无法读取"),
    ("5000000000101", "jpeg", "只接受 PNG"),
    ("5000000000101", "tiny", "至少需要"),
], ids=["short", "letter", "duplicate", "garbage", "jpeg", "tiny"])
def test_seal_update_rejects(app, staff_client, restore_seals, code, image, message) -> None:
    if image == "jpeg":
        buffer = io.BytesIO()
        Image.new("RGB", (300, 300), "red").save(buffer, format="JPEG")
        image = buffer.getvalue()
    elif image == "tiny":
        image = png_bytes(Image.new("RGBA", (50, 50), (200, 0, 0, 255)))
    response = post_seal(staff_client, first_seal_id(app), code, image)
    html = staff_client.get(response.headers["Location"]).get_data(as_text=True)
    assert message in html


def test_seal_change_renders_installed_image(app, staff_client, restore_seals, import_roster) -> None:
    """After installing a seal, a holder's PDF (rendered afresh, not from cache) carries it."""
    from app.extensions import db
    from app.models import Certificate
    from app.services import certificates

    import_roster(FAULTY_ROSTER, "二级建造师", "certificate")
    with app.app_context():
        record = db.session.scalars(sa_select(Certificate)).first()
        before = certificates.cache_entry(record).etag
    post_seal(staff_client, first_seal_id(app), "5000000000101", png_bytes(seal_source("LA")))
    with app.app_context():
        record = db.session.scalars(sa_select(Certificate)).first()
        assert certificates.cache_entry(record).etag != before
        page = render_page(certificates.render_signed_pdf(record))
    seal_area = crop_mm(page, SEAL_AREA_MM)
    assert count_pixels(seal_area, is_red) < seal_area.width * seal_area.height * 0.01, "specimen still printed"


# --- admin: batch ZIP export ----------------------------------------------


def wait_for_export(client, job_id: int, timeout: float = 120) -> str:
    deadline = time_module.monotonic() + timeout
    while time_module.monotonic() < deadline:
        html = client.get(f"/admin/exports/{job_id}/progress").get_data(as_text=True)
        if "hx-trigger" not in html:
            return html
        time_module.sleep(0.5)
    raise AssertionError(f"export job {job_id} did not finish in {timeout} s")


def test_batch_export_zip(app, staff_client, import_roster, tmp_path: Path) -> None:
    from app.extensions import db
    from app.models import ImportBatch

    from .conftest import csrf_token

    import_roster(FAULTY_ROSTER, "二级建造师", "certificate")
    with app.app_context():
        batch_id = db.session.scalar(sa_select(ImportBatch.id).order_by(ImportBatch.id.desc()))
    page = staff_client.get(f"/admin/batches/{batch_id}").get_data(as_text=True)
    assert f"/admin/batches/{batch_id}/export" in page

    response = staff_client.post(f"/admin/batches/{batch_id}/export", data={"csrf_token": csrf_token(page)})
    assert response.status_code == 303
    job_id = int(response.headers["Location"].rstrip("/").split("/")[-1])
    running = staff_client.get(f"/admin/exports/{job_id}").get_data(as_text=True)
    assert "export-progress" in running

    finished = wait_for_export(staff_client, job_id)
    assert "下载 ZIP 文件" in finished
    download = staff_client.get(f"/admin/exports/{job_id}/download")
    body = download.data
    download.close()  # send_file streams from an open file that only close() releases
    assert download.mimetype == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(body))
    names = archive.namelist()
    assert len(names) == 12
    rare = [name for name in names if "𠮷" in PdfReader(io.BytesIO(archive.read(name))).pages[0].extract_text()]
    assert len(rare) == 1
    if PDFTOTEXT is not None:
        pdf_path = tmp_path / "rare.pdf"
        pdf_path.write_bytes(archive.read(rare[0]))
        text = subprocess.run([PDFTOTEXT, "-enc", "UTF-8", str(pdf_path), "-"], capture_output=True,
                              check=True, timeout=60).stdout.decode("utf-8")
        assert "王𠮷" in text


def test_batch_export_auditor_forbidden(app, login_staff, import_roster) -> None:
    from app.extensions import db
    from app.models import ImportBatch

    import_roster(FAULTY_ROSTER, "二级建造师", "certificate")
    with app.app_context():
        batch_id = db.session.scalar(sa_select(ImportBatch.id).order_by(ImportBatch.id.desc()))
    from .conftest import csrf_token

    client = login_staff("export-auditor", "auditor")
    page = client.get(f"/admin/batches/{batch_id}").get_data(as_text=True)
    assert f"/admin/batches/{batch_id}/export" not in page
    # The token comes from the logout form in the navigation bar.
    response = client.post(f"/admin/batches/{batch_id}/export", data={"csrf_token": csrf_token(page)})
    assert response.status_code == 403


# --- PDF cache key -----------------------------------------------------------


def _pdf_dates(path: Path) -> list[str]:
    text = PdfReader(str(path)).pages[0].extract_text().replace(" ", "")
    return re.findall(r"\d{4}年\d{2}月\d{2}日", text)


def _correct_approval_date(number: str, approval_date: str) -> None:
    from app.extensions import db
    from app.models import Certificate
    from app.services import records

    certificate = db.session.scalar(sa_select(Certificate).where(Certificate.number == number))
    values = {key: value or "" for key, value in records.snapshot(certificate).items()}
    values["approval_date"] = approval_date
    records.correct(certificate, values, reason="批准日期录入错误", actor="test", expected_version=certificate.version)


def _verify_file(app, pdf: bytes) -> str:
    from .conftest import csrf_token

    client = app.test_client()
    page = client.get("/verify/file").get_data(as_text=True)
    response = client.post(
        "/verify/file",
        data={"csrf_token": csrf_token(page), "file": (io.BytesIO(pdf), "证书.pdf")},
        content_type="multipart/form-data",
    )
    return response.get_data(as_text=True)


def test_pdf_cache_after_restore_correction(app, import_roster, runner, restore_target, tmp_path) -> None:
    """A correction made after a restore reuses the version number of a lost one, and gets its own PDF."""
    from app.extensions import db
    from app.models import Certificate
    from app.services import certificates

    number = "202421000001"
    import_roster("2024年度二级建造师考试合格人员名单.xlsx", "二级建造师", "certificate")
    written = runner.invoke(args=["backup", "--out", str(tmp_path / "backups")])
    backup_path = Path(re.search(r"已备份到 (\S+?)（", written.output).group(1))
    cli = restore_target.test_cli_runner()
    assert cli.invoke(args=["restore", str(backup_path)]).exit_code == 0
    with restore_target.app_context():
        _correct_approval_date(number, "2024-11-01")
        certificate = db.session.scalar(sa_select(Certificate).where(Certificate.number == number))
        lost = certificates.cached_pdf(certificate)
        lost_pdf = lost.path.read_bytes()
        db.session.remove()

    # The restore loses the correction above; staff then correct the record again, to another date.
    assert cli.invoke(args=["restore", "--force", str(backup_path)]).exit_code == 0
    with restore_target.app_context():
        _correct_approval_date(number, "2024-12-01")
        certificate = db.session.scalar(sa_select(Certificate).where(Certificate.number == number))
        source = certificates.source_of(certificate)
        missed = certificates.cache_entry(source)
        missed_before_render = missed.path.is_file()
        current = certificates.render_cached(source)
        hit = certificates.cache_entry(source)
        db.session.remove()

    assert certificate.version == 2
    assert missed.etag != lost.etag
    assert not missed_before_render, f"the lost correction's file would be served: {missed.path.name}"
    assert _pdf_dates(current.path)[0] == "2024年12月01日"
    assert hit == current
    assert "文件已被修改" in _verify_file(restore_target, lost_pdf)
    assert "真实有效" in _verify_file(restore_target, current.path.read_bytes())


@pytest.mark.parametrize(
    "column, value",
    [("name", "田娥"), ("approval_date", date(2024, 12, 1)), ("birth_month", date(1985, 2, 1)), ("level", "中级")],
)
def test_cache_key_covers_printed_fields(app, import_roster, column, value) -> None:
    """A printed field changed without a version bump still gives a new cache file name and ETag."""
    from app.extensions import db
    from app.models import Certificate
    from app.services import certificates

    import_roster(FAULTY_ROSTER, "二级建造师", "certificate")
    with app.app_context():
        record = db.session.scalars(sa_select(Certificate).order_by(Certificate.id)).first()
        before = certificates.cache_entry(record)
        setattr(record, column, value)
        db.session.flush()
        after = certificates.cache_entry(record)
        owned = certificates.owned_pdf_source(record.number, record.name, record.id_number_hash)
        owned_entry = certificates.cache_entry(owned)
        db.session.rollback()

    assert after.etag != before.etag
    assert after.path != before.path
    assert owned_entry == after
