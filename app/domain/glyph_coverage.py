"""Glyph coverage of the shipped fonts, read without registering them with reportlab.

Registering the three font files with reportlab (`fonts.register_fonts`)
took 1.4 s and 133 MB of RSS on a 2-core AMD EPYC VM, which a roster import
does not need just to reject names no font covers. This module reads only each font's `cmap`
table with fontTools and keeps the union as a bitmap of 0x110000 bits
(136 KiB). With a cache directory the bitmap is also written to disk, keyed
by the font files' names, sizes and modification times, so later processes
load it in milliseconds.

A code point counts as covered when a font of `fonts.FONT_CHAIN` maps it to
a glyph other than glyph 0 (.notdef), the rule `fonts.register_fonts` uses.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path

from fontTools.ttLib import TTFont

from .fonts import DEFAULT_STATIC_DIR, FONT_CHAIN, font_path

logger = logging.getLogger(__name__)

CODE_POINTS = 0x110000
BITMAP_BYTES = CODE_POINTS // 8
CACHE_PREFIX = "glyph-coverage-"

_lock = threading.Lock()
_bitmaps: dict[tuple[Path, Path | None], bytes] = {}


def coverage_bitmap(static_dir: Path = DEFAULT_STATIC_DIR, cache_dir: Path | None = None) -> bytes:
    """Return the bitmap of code points covered by the font chain, computing it once per process."""
    key = (static_dir, cache_dir)
    bitmap = _bitmaps.get(key)
    if bitmap is not None:
        return bitmap
    with _lock:
        bitmap = _bitmaps.get(key)
        if bitmap is None:
            bitmap = _load_or_build(static_dir, cache_dir)
            _bitmaps[key] = bitmap
    return bitmap


def is_covered(char: str, bitmap: bytes) -> bool:
    """Return whether a font has a glyph for `char`; whitespace always counts as covered."""
    if char.isspace():
        return True
    code_point = ord(char)
    return bool(bitmap[code_point >> 3] & (1 << (code_point & 7)))


def uncovered_characters(text: str, bitmap: bytes) -> list[str]:
    """Return the distinct characters of `text` that no font of the chain covers, in order."""
    return [char for char in dict.fromkeys(text) if not is_covered(char, bitmap)]


def _load_or_build(static_dir: Path, cache_dir: Path | None) -> bytes:
    files = [font_path(spec, static_dir) for spec in FONT_CHAIN]
    cache_file = cache_dir / f"{CACHE_PREFIX}{_fingerprint(files)}.bin" if cache_dir else None
    if cache_file is not None and cache_file.is_file():
        data = cache_file.read_bytes()
        if len(data) == BITMAP_BYTES:
            return data
        logger.warning("Glyph coverage cache %s is invalid (%s bytes, expected %s); rebuilding it", cache_file, len(data), BITMAP_BYTES)
    bitmap = _build(files)
    if cache_file is not None:
        _write_cache(cache_file, bitmap)
    return bitmap


def _fingerprint(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for spec, path in zip(FONT_CHAIN, files, strict=True):
        status = path.stat()
        digest.update(f"{path.name}:{spec.subfont_index}:{status.st_size}:{status.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _build(files: list[Path]) -> bytes:
    bitmap = bytearray(BITMAP_BYTES)
    for spec, path in zip(FONT_CHAIN, files, strict=True):
        # lazy=True parses only the tables that are read, here cmap and the glyph order.
        font = TTFont(str(path), fontNumber=spec.subfont_index, lazy=True)
        try:
            notdef = font.getGlyphOrder()[0]
            for code_point, glyph in font.getBestCmap().items():
                if glyph != notdef and code_point < CODE_POINTS:
                    bitmap[code_point >> 3] |= 1 << (code_point & 7)
        finally:
            font.close()
    logger.info("Read glyph coverage of %s font files", len(files))
    return bytes(bitmap)


def _write_cache(cache_file: Path, bitmap: bytes) -> None:
    # Written to a temporary name and renamed, so a reader never sees half a file.
    temporary = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_bytes(bitmap)
        os.replace(temporary, cache_file)
    except OSError as error:
        logger.warning("Failed to write glyph coverage cache %s: %s", cache_file, error)
        temporary.unlink(missing_ok=True)
