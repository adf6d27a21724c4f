"""The shipped CJK fonts: registration with reportlab and per-character fallback.

The chain is WenQuanYi Zen Hei (primary), HanaMinA (rest of the BMP and
CJK Ext A) and HanaMinB (Plane 2, CJK Ext B-F). `fontrun` wraps each run of
characters that the primary font lacks in a span naming the first font of
the chain that has them. Every glyph is then drawn by a font that contains
it, whether or not the installed xhtml2pdf falls back per character itself.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from markupsafe import Markup, escape
from reportlab import rl_config
from reportlab.pdfbase import pdfmetrics, ttfonts
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import tables
from xhtml2pdf import default as xhtml2pdf_default

from . import line_breaking

logger = logging.getLogger(__name__)

DEFAULT_STATIC_DIR = Path(__file__).resolve().parents[2] / "static"


@dataclass(frozen=True)
class FontSpec:
    name: str  # reportlab name, also the CSS font-family
    filename: str  # under static/fonts/
    subfont_index: int = 0  # face inside a TrueType collection


FONT_CHAIN: tuple[FontSpec, ...] = (
    FontSpec("WQYZenHei", "wqy-zenhei.ttc", 0),
    FontSpec("HanaMinA", "HanaMinA.ttf"),
    FontSpec("HanaMinB", "HanaMinB.ttf"),
)
PRIMARY_FONT = FONT_CHAIN[0].name

_lock = threading.Lock()
_coverage: dict[str, frozenset[int]] = {}  # font name -> code points with a real glyph


def font_path(spec: FontSpec, static_dir: Path = DEFAULT_STATIC_DIR) -> Path:
    return static_dir / "fonts" / spec.filename


def register_fonts(static_dir: Path = DEFAULT_STATIC_DIR) -> None:
    """Register the font chain with reportlab and xhtml2pdf, once per process.

    It also makes the primary font reportlab's default font and installs the
    Chinese line-breaking rules of `line_breaking`.

    Parsing the three files took 0.3 s on a 2-core AMD EPYC VM, so later
    calls return at once, and the `static_dir` of the first call is the one used.
    """
    with _lock:
        if _coverage:
            return
        _patch_to_unicode_cmap()
        line_breaking.install()
        for spec in FONT_CHAIN:
            _register_one(spec, static_dir)
        # reportlab selects Helvetica, its default font, where nothing is
        # drawn: as a canvas's initial font on every page, and for each table
        # cell before the cell's flowables. Each selection lists Helvetica as
        # a page font. A TrueType initial font is not selected at all, and
        # the cell default becomes a font the page embeds anyway.
        rl_config.canvas_basefontname = PRIMARY_FONT
        tables.CellStyle.fontname = PRIMARY_FONT


def _register_one(spec: FontSpec, static_dir: Path) -> None:
    font = TTFont(spec.name, str(font_path(spec, static_dir)), subfontIndex=spec.subfont_index)
    pdfmetrics.registerFont(font)
    # Each file has one weight, so <b> and <i> draw with the same face
    # instead of raising for a missing mapping.
    pdfmetrics.registerFontFamily(spec.name, normal=spec.name, bold=spec.name,
                                  italic=spec.name, boldItalic=spec.name)
    # Glyph 0 is .notdef, the empty box, so a character mapped to it is not covered.
    _coverage[spec.name] = frozenset(cp for cp, glyph in font.face.charToGlyph.items() if glyph)
    # xhtml2pdf copies this table into each document's font list, which is how
    # a CSS font-family reaches a font registered outside @font-face without
    # hashing the 70 MB of font files on every render.
    xhtml2pdf_default.DEFAULT_FONT[spec.name.lower()] = spec.name
    logger.info("registered font %s from %s", spec.name, spec.filename)


def font_for(char: str, static_dir: Path = DEFAULT_STATIC_DIR) -> str | None:
    """Return the first font of the chain with a glyph for `char`, or None."""
    register_fonts(static_dir)
    code_point = ord(char)
    for spec in FONT_CHAIN:
        if code_point in _coverage[spec.name]:
            return spec.name
    return None


def font_covers(font_name: str, char: str, static_dir: Path = DEFAULT_STATIC_DIR) -> bool:
    """Return whether the chain font `font_name` has a real glyph for `char`."""
    register_fonts(static_dir)
    return ord(char) in _coverage[font_name]


def missing_glyphs(text: str, static_dir: Path = DEFAULT_STATIC_DIR) -> list[str]:
    """Return the distinct characters of `text` that no shipped font covers, in order.

    Whitespace counts as covered: HTML collapses it, so it never needs a glyph.
    """
    missing: list[str] = []
    for char in text:
        if char.isspace() or char in missing:
            continue
        if font_for(char, static_dir) is None:
            missing.append(char)
    return missing


def split_runs(text: str, static_dir: Path = DEFAULT_STATIC_DIR) -> list[tuple[str, str | None]]:
    """Split `text` into (run, font) pairs. Whitespace joins the run before it."""
    runs: list[tuple[str, str | None]] = []
    for char in text:
        font = runs[-1][1] if runs and char.isspace() else font_for(char, static_dir)
        if runs and runs[-1][1] == font:
            runs[-1] = (runs[-1][0] + char, font)
        else:
            runs.append((char, font))
    return runs


def fontrun(value: object) -> Markup:
    """Escape `value` for HTML and wrap runs the primary font lacks in a font span.

    This is the Jinja filter for every variable text field. A character no
    font covers is left to the primary font, but `render_pdf` rejects such
    text before it gets here.
    """
    if value is None:
        return Markup("")
    parts: list[str] = []
    for run, font in split_runs(str(value)):
        if font is None or font == PRIMARY_FONT:
            parts.append(str(escape(run)))
        else:
            parts.append(f'<span style="font-family: {font}">{escape(run)}</span>')
    return Markup("".join(parts))


def _to_unicode_cmap(fontname: str, subset: list[int]) -> str:
    """Build a ToUnicode CMap that encodes code points above U+FFFF as surrogate pairs.

    reportlab 5.1's `makeToUnicodeCMap` writes them as 5 hex digits (<20BB7>),
    which PDF readers reject, so 𠮷 extracts as a wrong character.
    """
    entries = [f"<{index:02X}> <{chr(cp).encode('utf-16-be', 'surrogatepass').hex().upper()}>"
               for index, cp in enumerate(subset)]
    return "\n".join([
        "/CIDInit /ProcSet findresource begin",
        "12 dict begin",
        "begincmap",
        "/CIDSystemInfo",
        f"<< /Registry ({fontname})",
        f"/Ordering ({fontname})",
        "/Supplement 0",
        ">> def",
        f"/CMapName /{fontname} def",
        "/CMapType 2 def",
        "1 begincodespacerange",
        f"<00> <{len(subset) - 1:02X}>",
        "endcodespacerange",
        f"{len(subset)} beginbfchar",
        *entries,
        "endbfchar",
        "endcmap",
        "CMapName currentdict /CMap defineresource pop",
        "end",
        "end",
    ])


def _patch_to_unicode_cmap() -> None:
    # TTFont.addObjects looks the function up in the module at call time, so
    # replacing it fixes every subset this process writes. BMP entries come
    # out byte for byte as reportlab writes them.
    ttfonts.makeToUnicodeCMap = _to_unicode_cmap
