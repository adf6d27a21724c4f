"""QR tokens: a certificate's opaque public id, signed so it cannot be guessed.

Printed codes live for decades, so tokens carry no timestamp and keys rotate
by listing: the newest key signs, every listed key verifies.
"""

from __future__ import annotations

from collections.abc import Sequence

from itsdangerous import BadData, URLSafeSerializer

# Separates QR signatures from every other use of the same keys.
SALT = "certificate-qr-token"


def _serializer(keys: Sequence[str]) -> URLSafeSerializer:
    if not keys:
        raise ValueError("QR_TOKEN_KEYS is empty")
    return URLSafeSerializer(list(keys), salt=SALT)


def make_token(public_id: str, keys: Sequence[str]) -> str:
    """Sign `public_id` with the newest key (the last in `keys`)."""
    return _serializer(keys).dumps(public_id)


def read_token(token: str, keys: Sequence[str]) -> str | None:
    """Return the public id a token names, or None when it is malformed or forged."""
    try:
        value = _serializer(keys).loads(token)
    except (BadData, UnicodeError, ValueError):
        return None
    return value if isinstance(value, str) else None
