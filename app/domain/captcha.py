"""Image captchas drawn locally with Pillow (no outside service)."""

from __future__ import annotations

import io
import random
import secrets

from PIL import Image, ImageDraw, ImageFilter, ImageFont

# No 0/O, 1/I/L, 2/Z, 5/S or 8/B, which read alike once distorted.
ALPHABET = "34679ACDEFGHJKMNPQRTUVWXY"
LENGTH = 5
WIDTH, HEIGHT = 180, 60


def new_answer() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))


def render_png(answer: str) -> bytes:
    """Draw `answer` with rotated letters, noise lines and dots, and return the PNG bytes."""
    rng = random.Random(secrets.randbits(64))
    image = Image.new("RGB", (WIDTH, HEIGHT), (245, 247, 250))
    font = ImageFont.load_default(size=34)
    x = 10
    for char in answer:
        glyph = Image.new("RGBA", (44, 52), (0, 0, 0, 0))
        ImageDraw.Draw(glyph).text((6, 4), char, font=font, fill=(rng.randint(10, 90), rng.randint(10, 90), rng.randint(60, 140)))
        glyph = glyph.rotate(rng.uniform(-28, 28), resample=Image.Resampling.BICUBIC, expand=False)
        image.paste(glyph, (x, rng.randint(0, 8)), glyph)
        x += rng.randint(28, 33)
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        start = (rng.randint(0, WIDTH), rng.randint(0, HEIGHT))
        end = (rng.randint(0, WIDTH), rng.randint(0, HEIGHT))
        draw.line([start, end], fill=(rng.randint(80, 180),) * 3, width=2)
    for _ in range(300):
        draw.point((rng.randint(0, WIDTH - 1), rng.randint(0, HEIGHT - 1)), fill=(rng.randint(0, 200),) * 3)
    image = image.filter(ImageFilter.SMOOTH)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def normalise_answer(text: str) -> str:
    return "".join((text or "").split()).upper()
