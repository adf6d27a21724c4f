"""Benchmark certificate rendering: xhtml2pdf route vs reportlab canvas, signing, and pages/s on all cores.

Run from the project root:

    .venv/bin/python -m bench.render [--count 40] [--pages 1000] [--processes 2]

It prints one Markdown table for docs/benchmarks.md. Timings are CPU-time medians
over `--count` distinct certificates rendered in a warm process (fonts
registered, templates compiled), so "first render" means the first render
of each certificate, not the first of the process.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.lib.utils import ImageReader
from reportlab.pdfgen import canvas
from reportlab.platypus import Paragraph, Table, TableStyle

from app.domain import signing
from app.domain.catalogue import KIND_CERTIFICATE
from app.domain.documents import (
    CertificateDocument,
    document_fields,
    fill_statement,
    format_day,
    qr_png,
    render_pdf,
)
from app.domain.fonts import PRIMARY_FONT, register_fonts
from app.domain.seals import seal_png
from app.domain.seed import build_catalogue

PROJECT_DIR = Path(__file__).resolve().parents[1]
STATIC_DIR = PROJECT_DIR / "static"
CATALOGUE = build_catalogue()
LAYOUT = "qual_constructor"


def sample(index: int) -> CertificateDocument:
    exam = CATALOGUE.exams["二级建造师"]
    specialty = exam.specialties[index % len(exam.specialties)]
    return CertificateDocument(
        layout=CATALOGUE.layouts[exam.layout_code(KIND_CERTIFICATE, specialty)],
        number=f"2024210{index:05d}",
        name=["张晓明", "王𠮷", "李堃", "欧阳俊杰"][index % 4],
        gender="男",
        id_type="居民身份证",
        id_number="50010119900101123X",
        birth_month=date(1990, 1, 1),
        exam=exam.name,
        specialty=specialty,
        level=None,
        approval_date=date(2024, 10, 18),
        qr_url=f"https://zs.example.cn/v/bench-{index:06d}-Xk39aQ7pLm",
        lookup_url="https://zs.example.cn/verify",
    )


def canvas_page(doc: CertificateDocument, instance_dir: Path, *, seal: bool = True) -> bytes:
    """Draw the same page as templates/certificates/_base.html directly with reportlab's canvas.

    With `seal=False` the seal image is left out, which gives the time of a
    canvas version that, like render_pdf, encodes each seal image only once
    per process.
    """
    buffer = io.BytesIO()
    page = canvas.Canvas(buffer, pagesize=A4)
    width, height = A4

    def top(value_mm: float) -> float:
        return height - value_mm * mm

    page.setStrokeColorRGB(0.62, 0.106, 0.122)
    page.setLineWidth(2.2)
    page.rect(11 * mm, top(286), 188 * mm, 275 * mm)
    page.setLineWidth(0.6)
    page.rect(13.5 * mm, top(283.5), 183 * mm, 270 * mm)
    page.setStrokeColorRGB(0.77, 0.1, 0.12)
    page.setLineWidth(1.2)
    page.rect(160 * mm, top(29), 30 * mm, 10 * mm)
    page.setFillColorRGB(0.77, 0.1, 0.12)
    page.setFont(PRIMARY_FONT, 12)
    page.drawCentredString(175 * mm, top(25.5), "电子证书")

    seal_record = doc.layout.document_kind.seal
    if seal:
        png = seal_png(seal_record, static_dir=STATIC_DIR, instance_dir=instance_dir)
        page.drawImage(ImageReader(io.BytesIO(png)), 121 * mm, top(241), 42 * mm, 42 * mm, mask="auto")
    page.setFont(PRIMARY_FONT, 8)
    page.drawCentredString(142 * mm, top(245), f"印章编码：{seal_record.code}")

    page.setFillColorRGB(0.48, 0.07, 0.086)
    page.setFont(PRIMARY_FONT, 24)
    page.drawCentredString(105 * mm, top(40), doc.layout.title)
    page.setFillColorRGB(0.33, 0.33, 0.33)
    page.setFont(PRIMARY_FONT, 11)
    page.drawCentredString(105 * mm, top(48), doc.layout.document_kind.name)

    statement = Paragraph(fill_statement(doc), ParagraphStyle(
        "statement", fontName=PRIMARY_FONT, fontSize=12.5, leading=21, firstLineIndent=25, wordWrap="CJK"))
    _, statement_height = statement.wrap(170 * mm, 60 * mm)
    statement.drawOn(page, 20 * mm, top(56) - statement_height)

    cell = ParagraphStyle("cell", fontName=PRIMARY_FONT, fontSize=13, leading=16, wordWrap="CJK")
    rows = [[field.label, Paragraph(field.value, cell)] for field in document_fields(doc)]
    table = Table(rows, colWidths=[42 * mm, 128 * mm])
    table.setStyle(TableStyle([
        ("FONT", (0, 0), (0, -1), PRIMARY_FONT, 12),
        ("BACKGROUND", (0, 0), (0, -1), (0.957, 0.929, 0.89)),
        ("GRID", (0, 0), (-1, -1), 0.5, (0.55, 0.45, 0.39)),
        ("BOX", (0, 0), (-1, -1), 0.8, (0.42, 0.29, 0.23)),
        ("ALIGN", (0, 0), (0, -1), "CENTER"),
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
        ("TOPPADDING", (0, 0), (-1, -1), 9.6),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 7.4),
    ]))
    _, table_height = table.wrap(170 * mm, 140 * mm)
    table.drawOn(page, 20 * mm, top(56) - statement_height - 14 - table_height)

    page.setFillColorRGB(0.1, 0.1, 0.1)
    page.setFont(PRIMARY_FONT, 13)
    issuers = [doc.layout.document_kind.issuer, *doc.layout.co_issuers]
    for index, issuer in enumerate(issuers):
        page.drawCentredString(142 * mm, top(214 - 7.4 * (len(issuers) - index) + 5), issuer)
    page.drawCentredString(142 * mm, top(221), format_day(doc.approval_date))

    page.drawImage(ImageReader(io.BytesIO(qr_png(doc.qr_url))), 160 * mm, top(277), 28 * mm, 28 * mm)
    page.setFont(PRIMARY_FONT, 9)
    page.drawCentredString(174 * mm, top(281), "扫码查验")
    page.setFont(PRIMARY_FONT, 9.5)
    page.drawString(20 * mm, top(259), f"查验网址：{doc.lookup_url}")
    page.drawString(20 * mm, top(264), "用人单位可扫描右侧二维码，或访问查验网址，输入证书编号和持证人姓名，")
    page.drawString(20 * mm, top(269), "核验本证书真伪。")
    page.showPage()
    page.save()
    return buffer.getvalue()


def timed(function, *args) -> float:
    # CPU time of this process: the machine is shared, and wall-clock medians
    # moved by 2x with the load of other jobs while CPU time stayed within 10%.
    started = time.process_time()
    function(*args)
    return time.process_time() - started


def _render_and_sign(args: tuple[int, str, str]) -> int:
    index, instance, keys_dir = args
    keys = signing.SigningKeys(Path(keys_dir) / signing.KEY_FILE, Path(keys_dir) / signing.CERT_FILE,
                               (Path(keys_dir) / signing.CA_FILE,))
    pdf = render_pdf(sample(index), static_dir=STATIC_DIR, instance_dir=Path(instance))
    return len(signing.sign_pdf(pdf, keys, public_id=f"bench{index}", version=1))


def _warm(_: int) -> None:
    register_fonts(STATIC_DIR)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=40, help="distinct certificates timed per method")
    parser.add_argument("--pages", type=int, default=1000, help="certificates rendered for the pages/s figure")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="worker processes for pages/s")
    options = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        instance = Path(scratch) / "instance"
        instance.mkdir()
        keys = signing.generate_demo_keys(Path(scratch) / "keys")
        register_fonts(STATIC_DIR)
        # Warm up: templates compiled, specimen seal drawn, signer loaded.
        warm = render_pdf(sample(0), static_dir=STATIC_DIR, instance_dir=instance)
        canvas_page(sample(0), instance)
        signing.sign_pdf(warm, keys, public_id="warm", version=1)

        xhtml, direct, direct_no_seal, signs = [], [], [], []
        for index in range(1, options.count + 1):
            doc = replace(sample(index))
            direct.append(timed(canvas_page, doc, instance))
            direct_no_seal.append(timed(lambda: canvas_page(doc, instance, seal=False)))
            started = time.process_time()
            pdf = render_pdf(doc, static_dir=STATIC_DIR, instance_dir=instance)
            xhtml.append(time.process_time() - started)
            started = time.process_time()
            signing.sign_pdf(pdf, keys, public_id=f"p{index}", version=1)
            signs.append(time.process_time() - started)

        context = multiprocessing.get_context("fork")
        with context.Pool(options.processes) as pool:
            pool.map(_warm, range(options.processes))
            started = time.perf_counter()
            jobs = [(index, str(instance), str(keys.key_file.parent)) for index in range(options.pages)]
            pool.map(_render_and_sign, jobs, chunksize=20)
            elapsed = time.perf_counter() - started

    xhtml_ms = statistics.median(xhtml) * 1000
    direct_ms = statistics.median(direct) * 1000
    no_seal_ms = statistics.median(direct_no_seal) * 1000
    sign_ms = statistics.median(signs) * 1000
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| figure | value |")
    print("| --- | --- |")
    print(f"| reportlab canvas, same page (median of {options.count}) | {direct_ms:.1f} ms |")
    print(f"| render_pdf via xhtml2pdf, unsigned (median of {options.count}) | {xhtml_ms:.1f} ms |")
    print(f"| ratio xhtml2pdf / canvas | {xhtml_ms / direct_ms:.2f}× |")
    print(f"| reportlab canvas, same page without the seal image (median of {options.count}) | {no_seal_ms:.1f} ms |")
    print(f"| ratio xhtml2pdf / canvas without the seal image | {xhtml_ms / no_seal_ms:.2f}× |")
    print(f"| PAdES signing (median of {options.count}) | {sign_ms:.1f} ms |")
    print(f"| ratio (xhtml2pdf + signing) / canvas | {(xhtml_ms + sign_ms) / direct_ms:.2f}× |")
    print(f"| {options.pages} certificates rendered and signed, {options.processes} processes | "
          f"{elapsed:.1f} s, {options.pages / elapsed:.1f} pages/s |")


if __name__ == "__main__":
    main()
