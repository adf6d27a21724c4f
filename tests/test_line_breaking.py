"""Chinese line breaking: runs of closing marks stay off line starts, opening marks off line ends.

`break_lines` is checked on its own with equal-width characters at every
line width, then in real certificate PDFs whose printed lines are read back
with pypdfium2 (character boxes) and pdftotext (poppler-utils).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from reportlab.lib import textsplit
from xhtml2pdf import reportlab_paragraph

from app.domain import fonts
from app.domain.documents import CertificateDocument, render_pdf
from app.domain.line_breaking import CANNOT_END, CANNOT_START, break_lines, cjk_frag_split, dumb_split

from .test_documents import STATIC_DIR, char_boxes, find_text, sample_document

# Punctuation a Chinese line must not start with, and must not end with.
CLOSING_PUNCTUATION = "，。、；：？！）》」』】〕〗”’"
OPENING_PUNCTUATION = "（《「『【〔〖“‘"

# Opening marks, closing pairs and runs: “…。”, 》，, ！）, ？”） and ）“ between units.
PUNCTUATION_UNIT = "“合格。”《法规》，（审核！）“通过？”）"
# Prefixes of increasing length shift every mark of the unit through every column.
PLAIN_PREFIX = "甲乙丙丁戊己庚辛壬癸子丑寅卯辰巳午未申酉戌亥"
PDFTOTEXT = shutil.which("pdftotext")


def check_lines(lines: list[str]) -> None:
    """Assert that no line but the first starts with closing punctuation and none but the last ends with opening."""
    for before, after in zip(lines, lines[1:]):
        assert after[0] not in CLOSING_PUNCTUATION, f"line {after!r} starts with closing punctuation after {before!r}"
        assert before[-1] not in OPENING_PUNCTUATION, f"line {before!r} ends with opening punctuation before {after!r}"


# --- break_lines with equal widths ------------------------------------------


def test_tables_contain_chinese_marks() -> None:
    assert set(CLOSING_PUNCTUATION) <= CANNOT_START
    assert set(OPENING_PUNCTUATION) <= CANNOT_END


def test_single_mark_hangs() -> None:
    # The comma overflows the 3-character line and hangs in the margin.
    assert dumb_split("甲乙丙，丁", [1] * 5, 3) == [[-1, "甲乙丙，"], [2, "丁"]]


def test_closing_pair_moves_down() -> None:
    # "。" overflows and "”" after it cannot start a line either, so 丙。” moves down whole.
    assert dumb_split("甲乙丙。”丁", [1] * 6, 3) == [[1, "甲乙"], [0, "丙。”"], [2, "丁"]]


def test_opening_mark_moves_down() -> None:
    assert dumb_split("甲乙“丙”丁", [1] * 6, 3) == [[1, "甲乙"], [0, "“丙”"], [2, "丁"]]


@pytest.mark.parametrize("width", range(3, 25))
def test_break_lines_every_position(width: int) -> None:
    for offset in range(len(PUNCTUATION_UNIT)):
        text = PLAIN_PREFIX[:offset] + PUNCTUATION_UNIT * 3
        spans = break_lines(text, [1] * len(text), [width])
        lines = [text[start:end] for start, end in spans]
        assert "".join(lines) == text
        check_lines(lines)
        for line in lines:
            # A line may exceed its width only by one hanging closing mark.
            overflow = len(line) - width
            assert overflow <= 1, f"line {line!r} is {overflow} characters too long at width {width}"
            assert overflow < 1 or line[-1] in CLOSING_PUNCTUATION, f"line {line!r} hangs {line[-1]!r}"


def test_break_lines_widths_per_line() -> None:
    # The first line is 2 wide, then every line is 4 wide.
    assert break_lines("甲乙丙丁戊己庚辛", [1] * 8, [2, 4]) == [(0, 2), (2, 6), (6, 8)]


def test_break_lines_all_punctuation_progresses() -> None:
    # No break point satisfies the rules, so each line breaks at its overflow.
    text = "“”" * 6
    spans = break_lines(text, [1] * len(text), [3])
    assert "".join(text[start:end] for start, end in spans) == text
    assert all(end > start for start, end in spans)


def test_break_lines_latin_word_kept() -> None:
    # As in reportlab, a Latin word that overflows moves down to its start.
    text = "甲乙丙丁 BIM"
    assert break_lines(text, [1] * len(text), [6]) == [(0, 5), (5, 8)]


# --- certificate PDFs -------------------------------------------------------


@pytest.fixture(scope="module")
def instance_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("instance")


def printed_lines(boxes: list[tuple[float, float, float, float]], text: str) -> list[str]:
    """Split `text` into its printed lines, given the boxes of its visible characters in order."""
    visible = "".join(text.split())
    assert len(boxes) == len(visible)
    lines = [visible[0]]
    for index in range(1, len(boxes)):
        if boxes[index][1] > boxes[index - 1][3]:  # top below the previous bottom: a new line
            lines.append(visible[index])
        else:
            lines[-1] += visible[index]
    return lines


def test_printed_lines_splits_at_new_line() -> None:
    # Two characters on one line, then one on the next.
    boxes = [(0, 0, 4, 4), (4, 0, 8, 4), (0, 6, 4, 10)]
    assert printed_lines(boxes, "甲乙，") == ["甲乙", "，"]


def punctuated_document(offset: int) -> CertificateDocument:
    """Return a document whose statement, exam, specialty and issuer repeat PUNCTUATION_UNIT."""
    body = PLAIN_PREFIX[:offset] + PUNCTUATION_UNIT * 4
    doc = sample_document(
        "qual_cost_water",
        # 鿏 (U+9FCF) is only in HanaMinA, so the specialty is several text
        # runs and xhtml2pdf's cjkFragSplit breaks it. The other fields are
        # one run each, broken by reportlab's dumbSplit.
        specialty="鿏" + body,
        exam="建设工程" + body,
    )
    # The issuer frame has one line per issuer and shrinks a longer issuer,
    # re-wrapping it wider. Two units still wrap after that.
    kind = replace(doc.layout.document_kind, issuer="重庆市" + PLAIN_PREFIX[:offset] + PUNCTUATION_UNIT * 2)
    layout = replace(doc.layout, statement="经考试" + body + "特此证明。", document_kind=kind)
    return replace(doc, layout=layout)


@pytest.fixture(scope="module")
def punctuated_pdfs(instance_dir: Path) -> dict[int, tuple[CertificateDocument, bytes]]:
    """One document and its PDF per offset of PUNCTUATION_UNIT, rendered once for the module."""
    pdfs = {}
    for offset in range(len(PUNCTUATION_UNIT)):
        doc = punctuated_document(offset)
        pdfs[offset] = (doc, render_pdf(doc, static_dir=STATIC_DIR, instance_dir=instance_dir))
    return pdfs


@pytest.mark.parametrize("offset", range(len(PUNCTUATION_UNIT)))
def test_pdf_field_lines_keep_runs(punctuated_pdfs, offset: int) -> None:
    doc, pdf = punctuated_pdfs[offset]
    boxes = char_boxes(pdf)
    fields = {
        "statement": doc.layout.statement,
        "exam": doc.exam,
        "specialty": doc.specialty,
        "issuer": doc.layout.document_kind.issuer,
    }
    for field, text in fields.items():
        lines = printed_lines(find_text(boxes, text), text)
        assert len(lines) > 1, f"{field} was not wrapped"
        check_lines(lines)


@pytest.mark.skipif(PDFTOTEXT is None, reason="pdftotext (Debian poppler-utils) is not installed")
@pytest.mark.parametrize("offset", range(len(PUNCTUATION_UNIT)))
def test_pdftotext_lines_keep_runs(punctuated_pdfs, tmp_path: Path, offset: int) -> None:
    # Every line of the page, the template's own text included.
    pdf_path = tmp_path / "punctuated.pdf"
    pdf_path.write_bytes(punctuated_pdfs[offset][1])
    result = subprocess.run([PDFTOTEXT, "-enc", "UTF-8", str(pdf_path), "-"],
                            capture_output=True, check=True, timeout=60)
    page_lines = [line.strip() for line in result.stdout.decode("utf-8").splitlines() if line.strip()]
    assert len(page_lines) > 20
    check_lines(page_lines)


def test_check_lines_rejects_bad_breaks() -> None:
    with pytest.raises(AssertionError, match="starts with closing"):
        check_lines(["甲乙。", "”丙"])
    with pytest.raises(AssertionError, match="ends with opening"):
        check_lines(["甲乙“", "丙”"])


def test_installed_with_fonts() -> None:
    fonts.register_fonts(STATIC_DIR)
    assert textsplit.dumbSplit is dumb_split
    assert reportlab_paragraph.cjkFragSplit is cjk_frag_split
