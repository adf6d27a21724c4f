"""Seal images for certificates: installed official images or a drawn 样章 specimen.

Every PNG this module returns is 8-bit RGBA whose fully transparent pixels
are white. A reader that honours the alpha channel shows red ink over the
page, and one that drops it shows a white square, never the black box that
palette, LA or premultiplied images turn into in some PDF writers.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import threading
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .catalogue import Seal

logger = logging.getLogger(__name__)

SEAL_RED = (204, 20, 20)
SPECIMEN_SIZE_PX = 640  # about 390 dpi at the 42 mm a seal is printed at
SPECIMEN_MARK = "样章"
SPECIMEN_DRAWING_VERSION = 2  # raise it whenever the output of draw_specimen changes
# The copy the renderer links. An installed image of up to 4000 px would
# otherwise go into every certificate at full size, and each process decodes
# and encodes it at least once. Specimens pass through at their own size.
# Pillow 13 decoded the 640 px specimen in 2.7 ms from a level-1 file and in
# 4.2 ms from its default level 6 (2-core VM).
SEAL_RENDER_MAX_PX = SPECIMEN_SIZE_PX
SEAL_RENDER_ZLIB_LEVEL = 1
SEAL_FONT_FILE = Path("fonts") / "wqy-zenhei.ttc"
# From the centre of the first character of the seal's name to that of the
# last, over the top. The 130 degrees left at the bottom hold the 样章 mark.
SEAL_TEXT_ARC_DEGREES = 230.0

_lock = threading.Lock()
_memory_cache: dict[tuple[str, str, str | None], bytes] = {}


class SealImageError(ValueError):
    """An installed seal image is missing, unreadable or outside instance/."""


def seal_png(seal: Seal, *, static_dir: Path, instance_dir: Path | None = None) -> bytes:
    """Return the seal as PNG bytes, from its installed image or as a specimen.

    Results are cached in memory, and specimens also on disk under
    `instance_dir/seals/` when an instance folder is given.
    """
    key = (seal.code, seal.name, seal.image_path)
    with _lock:
        cached = _memory_cache.get(key)
    if cached is not None:
        return cached
    if seal.image_path is None:
        png = _specimen_png_cached(seal, static_dir, instance_dir)
    else:
        png = _installed_png(seal, instance_dir)
    with _lock:
        _memory_cache[key] = png
    return png


def seal_render_path(seal: Seal, *, static_dir: Path, instance_dir: Path) -> Path:
    """Return a file under `instance_dir`/seals/ holding the seal as the renderer draws it, writing it when missing.

    The renderer links this file instead of inlining a 100 KB data URI,
    which xhtml2pdf's HTML tokenizer would otherwise scan on every render.
    The file is `seal_png(seal)` scaled down to SEAL_RENDER_MAX_PX and saved
    at zlib level 1, which decodes faster than Pillow's default level.
    """
    png = seal_png(seal, static_dir=static_dir, instance_dir=instance_dir)
    digest = hashlib.sha256(png + f"\n{SEAL_RENDER_MAX_PX}\n{SEAL_RENDER_ZLIB_LEVEL}".encode()).hexdigest()[:16]
    path = instance_dir / "seals" / f"render-{digest}.png"
    if not path.is_file():
        _write_cache(path, render_png(png), seal.code)
    return path


def render_png(png: bytes) -> bytes:
    """Return `png` at most SEAL_RENDER_MAX_PX wide and high, as 8-bit RGBA saved at zlib level 1."""
    with Image.open(io.BytesIO(png)) as source:
        image = source.convert("RGBA")
    if max(image.size) > SEAL_RENDER_MAX_PX:
        image.thumbnail((SEAL_RENDER_MAX_PX, SEAL_RENDER_MAX_PX), Image.Resampling.LANCZOS)
        image = flatten_alpha(image)  # resampling blends colour into the transparent pixels
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=SEAL_RENDER_ZLIB_LEVEL)
    return buffer.getvalue()


def _installed_png(seal: Seal, instance_dir: Path | None) -> bytes:
    if instance_dir is None:
        raise SealImageError(f"印章「{seal.name}」有图片路径，但未提供 instance 目录")
    root = instance_dir.resolve()
    path = (root / seal.image_path).resolve()
    if not path.is_relative_to(root):
        raise SealImageError(f"印章「{seal.name}」的图片路径不在 instance 目录内：{seal.image_path}，请把图片放到 instance/ 下")
    try:
        with Image.open(path) as image:
            return to_png_bytes(flatten_alpha(image))
    except OSError as error:
        raise SealImageError(f"无法读取印章「{seal.name}」的图片 {seal.image_path}：{error}，请检查文件是否为有效的 PNG") from error


def _specimen_png_cached(seal: Seal, static_dir: Path, instance_dir: Path | None) -> bytes:
    cache_file = None
    if instance_dir is not None:
        # The drawing version is part of the name, so a changed drawing
        # replaces specimens cached by an earlier release.
        digest = hashlib.sha256(f"{seal.code}\n{seal.name}\n{SPECIMEN_DRAWING_VERSION}".encode()).hexdigest()[:16]
        cache_file = instance_dir / "seals" / f"specimen-{seal.code}-{digest}.png"
        if cache_file.is_file():
            return cache_file.read_bytes()
    png = to_png_bytes(draw_specimen(seal.name, font_file=static_dir / SEAL_FONT_FILE))
    if cache_file is not None:
        _write_cache(cache_file, png, seal.code)
    return png


def _write_cache(cache_file: Path, png: bytes, seal_code: str) -> None:
    # The disk copy only saves redrawing after a restart, so a read-only
    # instance folder costs time but never a certificate.
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        # Written beside and renamed, so another worker never reads half a file.
        partial = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
        partial.write_bytes(png)
        partial.replace(cache_file)
    except OSError as error:
        logger.warning("failed to cache specimen seal %s at %s: %s", seal_code, cache_file, error)
        return
    logger.info("cached specimen seal %s at %s", seal_code, cache_file)


def flatten_alpha(image: Image.Image) -> Image.Image:
    """Convert any mode to RGBA whose transparent pixels are white.

    Colour is composited over white, and the alpha channel is kept as a mask.
    """
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB")
    rgb.putalpha(rgba.getchannel("A"))
    return rgb


def to_png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def draw_specimen(name: str, *, font_file: Path, size: int = SPECIMEN_SIZE_PX) -> Image.Image:
    """Draw a specimen seal: red ring, star, `name` along the upper arc and 样章 across."""
    # Drawn as a white-alpha mask first and coloured at the end, so the
    # antialiased edges carry alpha rather than a pink fringe.
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    centre = size / 2
    ring_width = round(size * 0.03)
    draw.ellipse((ring_width, ring_width, size - ring_width, size - ring_width),
                 outline=255, width=ring_width)
    _draw_star(draw, centre, centre, size * 0.16)
    _draw_arc_text(mask, name, font_file, radius=size * 0.375, char_size=round(size * 0.1))
    _draw_specimen_mark(draw, font_file, size)
    seal = Image.new("RGBA", (size, size), (*SEAL_RED, 0))
    seal.putalpha(mask)
    return flatten_alpha(seal)


def _draw_star(draw: ImageDraw.ImageDraw, cx: float, cy: float, radius: float) -> None:
    inner = radius * 0.382  # ratio of a regular pentagram
    points = []
    for index in range(10):
        r = radius if index % 2 == 0 else inner
        angle = math.radians(-90 + index * 36)
        points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    draw.polygon(points, fill=255)


def arc_angles(count: int, arc: float = SEAL_TEXT_ARC_DEGREES) -> list[float]:
    """Return the angles, in degrees clockwise from 3 o'clock, of `count` characters spread evenly over `arc`.

    The first and last characters sit at the ends of an arc centred on the
    top of the seal (-90 degrees), whatever the count, so a short name is
    spaced out rather than bunched at the top. One character sits at the top.
    """
    if count <= 1:
        return [-90.0] * count
    step = arc / (count - 1)
    start = -90 - arc / 2
    return [start + index * step for index in range(count)]


def _draw_arc_text(mask: Image.Image, text: str, font_file: Path, *, radius: float, char_size: int) -> None:
    """Draw `text` clockwise along the upper arc, each character facing the centre.

    Characters of long names are narrowed to their share of the arc, as
    engraved seals do, instead of overlapping.
    """
    font = ImageFont.truetype(str(font_file), char_size, index=0)
    centre = mask.width / 2
    angles = arc_angles(len(text))
    step = angles[1] - angles[0] if len(angles) > 1 else SEAL_TEXT_ARC_DEGREES
    char_width = min(char_size, round(radius * math.radians(step) * 0.92))
    for char, angle in zip(text, angles):
        glyph = Image.new("L", (char_size, char_size), 0)
        ImageDraw.Draw(glyph).text((char_size / 2, char_size / 2), char, font=font, fill=255, anchor="mm")
        cell = Image.new("L", (char_size * 2, char_size * 2), 0)
        narrowed = glyph.resize((char_width, char_size), Image.Resampling.LANCZOS)
        cell.paste(narrowed, (char_size - char_width // 2, char_size // 2))
        cell = cell.rotate(-(angle + 90), resample=Image.Resampling.BICUBIC)
        x = centre + radius * math.cos(math.radians(angle)) - char_size
        y = centre + radius * math.sin(math.radians(angle)) - char_size
        mask.paste(255, (round(x), round(y)), cell)


def _draw_specimen_mark(draw: ImageDraw.ImageDraw, font_file: Path, size: int) -> None:
    # Large enough to read at print size, and drawn with a clear band so it is
    # not mistaken for part of an official design.
    font = ImageFont.truetype(str(font_file), round(size * 0.17), index=0)
    y = size * 0.72
    box = (size * 0.27, y - size * 0.1, size * 0.73, y + size * 0.1)
    draw.rectangle(box, outline=255, width=round(size * 0.012))
    draw.text((size / 2, y), SPECIMEN_MARK, font=font, fill=255, anchor="mm")


# --- installing an official seal image -------------------------------------

SEAL_CODE_DIGITS = 13
MAX_SEAL_UPLOAD_BYTES = 2 * 1024 * 1024
MIN_SEAL_PX = 200  # below this the 42 mm print is under 120 dpi
MAX_SEAL_PX = 4000


class SealUploadError(ValueError):
    """An uploaded seal image or code is unusable; the message names what staff must fix."""


def validate_seal_code(code: str) -> str:
    """Return `code` stripped, or raise SealUploadError unless it is exactly 13 digits."""
    code = code.strip()
    if len(code) != SEAL_CODE_DIGITS or not code.isascii() or not code.isdigit():
        raise SealUploadError(f"印章编码「{code}」无效：应为 {SEAL_CODE_DIGITS} 位数字，请按印章备案信息填写。")
    return code


def validate_seal_png(data: bytes) -> tuple[int, int]:
    """Check that `data` is a square-ish PNG Pillow can decode; return its size in pixels."""
    if len(data) > MAX_SEAL_UPLOAD_BYTES:
        raise SealUploadError(f"印章图片有 {len(data) // 1024} KB，超过上限 {MAX_SEAL_UPLOAD_BYTES // 1024 // 1024} MB，请压缩后再上传。")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format = image.format
            size = image.size
            if image_format == "PNG":
                if max(size) > MAX_SEAL_PX:
                    raise SealUploadError(f"印章图片为 {size[0]}×{size[1]} 像素，超过上限 {MAX_SEAL_PX} 像素，请缩小后再上传。")
                image.load()  # decodes every pixel, so a truncated file fails here
    except SealUploadError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise SealUploadError(f"无法读取上传的印章图片：{error}。请上传有效的 PNG 文件。") from error
    if image_format != "PNG":
        raise SealUploadError(f"印章图片格式为 {image_format}，只接受 PNG（透明背景）文件。")
    if min(size) < MIN_SEAL_PX:
        raise SealUploadError(f"印章图片为 {size[0]}×{size[1]} 像素，至少需要 {MIN_SEAL_PX}×{MIN_SEAL_PX} 像素才能清晰打印。")
    return size
