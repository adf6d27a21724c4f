"""Golden images: every certificate layout rasterised by poppler and compared with a committed reference.

Each layout is rendered with fixed data (names, dates and QR URL from
`test_documents.sample_document`), rasterised with `pdftoppm -r 100 -gray`
(Debian poppler-utils) and compared with tests/golden/<layout>.png. A page
matches when at most GOLDEN_TOLERANCE of its pixels differ by more than
PIXEL_THRESHOLD grey levels, which absorbs antialiasing differences between
poppler builds but not a moved, missing or restyled element.

To regenerate the references after an intended layout change, run

    UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py

then look at every changed PNG before committing it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from PIL import Image, ImageChops

from app.domain.documents import render_pdf

from .test_documents import LAYOUT_CODES, STATIC_DIR, sample_document

GOLDEN_DIR = Path(__file__).parent / "golden"
PDFTOPPM = shutil.which("pdftoppm")
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
PIXEL_THRESHOLD = 48  # grey levels out of 255
# Fraction of the page's pixels (about 480 of 967,000). A changed name and
# certificate number differ in 0.12 %; a single changed character may pass,
# which the text-extraction tests in test_documents.py catch instead.
GOLDEN_TOLERANCE = 0.0005

pytestmark = pytest.mark.skipif(PDFTOPPM is None, reason="pdftoppm (Debian poppler-utils) is not installed")


def rasterise(pdf: bytes) -> Image.Image:
    # pdftoppm 22.12 reads the PDF from stdin but cannot write PNG to stdout.
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory) / "page"
        subprocess.run([PDFTOPPM, "-r", "100", "-gray", "-png", "-singlefile", "-", str(root)],
                       input=pdf, capture_output=True, check=True, timeout=120)
        with Image.open(root.with_suffix(".png")) as image:
            return image.convert("L")


def differing_fraction(actual: Image.Image, expected: Image.Image) -> float:
    difference = ImageChops.difference(actual, expected).point(lambda value: 255 if value > PIXEL_THRESHOLD else 0)
    differing = difference.histogram()[255]
    return differing / (actual.width * actual.height)


@pytest.fixture(scope="module")
def instance_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("instance")


@pytest.mark.parametrize("code", LAYOUT_CODES)
def test_layout_matches_golden(instance_dir: Path, tmp_path: Path, code: str) -> None:
    pdf = render_pdf(sample_document(code), static_dir=STATIC_DIR, instance_dir=instance_dir)
    actual = rasterise(pdf)
    reference = GOLDEN_DIR / f"{code}.png"
    if UPDATE:
        GOLDEN_DIR.mkdir(exist_ok=True)
        actual.save(reference, optimize=True)
        pytest.skip(f"wrote {reference}")
    assert reference.is_file(), f"no reference {reference}; run with UPDATE_GOLDEN=1 to create it"

    expected = Image.open(reference).convert("L")
    assert actual.size == expected.size, f"page size {actual.size} differs from the reference {expected.size}"
    fraction = differing_fraction(actual, expected)
    if fraction > GOLDEN_TOLERANCE:
        diff_path = tmp_path / f"{code}-diff.png"
        ImageChops.difference(actual, expected).save(diff_path)
        actual.save(tmp_path / f"{code}-actual.png")
    assert fraction <= GOLDEN_TOLERANCE, f"{fraction:.2%} of pixels differ from {reference}; see {tmp_path}"


def test_golden_detects_change(instance_dir: Path) -> None:
    """A different name must exceed the tolerance, or the comparison proves nothing."""
    reference = GOLDEN_DIR / "qual_constructor.png"
    if UPDATE or not reference.is_file():
        pytest.skip("references are being written")
    changed = render_pdf(sample_document("qual_constructor", name="欧阳晓明", number="CQ2099990099999"),
                         static_dir=STATIC_DIR, instance_dir=instance_dir)
    assert differing_fraction(rasterise(changed), Image.open(reference).convert("L")) > GOLDEN_TOLERANCE
