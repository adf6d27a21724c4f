"""Encryption at rest and keyed hashes for ID numbers (AES-256-GCM and HMAC-SHA256, from `cryptography`).

Ciphertexts are text: "v1:" + URL-safe base64 of a 12-byte random nonce
followed by the AES-GCM output. The random nonce makes two encryptions of one
ID number differ, so equality lookups go through `keyed_hash` instead.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "v1:"
NONCE_BYTES = 12
# Binds each ciphertext to its purpose, so it cannot be replayed into another encrypted field.
ASSOCIATED_DATA = b"id_number"


class DecryptionError(ValueError):
    """A stored value is not a ciphertext made with this key."""


def derive_key(secret: str) -> bytes:
    """Turn a configured key string (random, at least 32 characters) into 32 key bytes."""
    return hashlib.sha256(secret.encode("utf-8")).digest()


def encrypt(key: bytes, plaintext: str) -> str:
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, plaintext.encode("utf-8"), ASSOCIATED_DATA)
    return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")


def decrypt(key: bytes, token: str) -> str:
    if not token.startswith(PREFIX):
        raise DecryptionError("value is not an encrypted ID number (missing the v1: prefix)")
    try:
        raw = base64.urlsafe_b64decode(token[len(PREFIX):])
        return AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], ASSOCIATED_DATA).decode("utf-8")
    except (InvalidTag, ValueError) as error:
        raise DecryptionError("ID number cannot be decrypted with the configured ID_NUMBER_KEY") from error


def keyed_hash(key: bytes, value: str) -> str:
    """HMAC-SHA256 of a normalised ID number, as 64 hex digits."""
    return hmac.new(key, value.strip().upper().encode("utf-8"), hashlib.sha256).hexdigest()
