"""Encryption at rest and keyed hashes for ID numbers (AES-256-GCM and HMAC-SHA256, from `cryptography`).

Ciphertexts are text. The current form is "v2:" + key id + ":" + URL-safe
base64 of a 12-byte random nonce followed by the AES-GCM output. The key id
(8 hex digits, see `key_id`) names the key that encrypted the value, so a key
rotation can tell old values from new ones and decrypt each with its own key.
The older form "v1:" + base64 carries no key id and is still read: every
configured key is tried. The random nonce makes two encryptions of one value
differ, so equality lookups go through `keyed_hash` instead.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX_V1 = "v1:"
PREFIX = "v2:"
KEY_ID_LENGTH = 8
NONCE_BYTES = 12
# Binds each ciphertext to its purpose, so it cannot be replayed into another encrypted field.
# Other columns pass their own associated data (see app/id_numbers.py).
ASSOCIATED_DATA = b"id_number"


class DecryptionError(ValueError):
    """A stored value is not a ciphertext made with any configured key."""


def derive_key(secret: str) -> bytes:
    """Turn a configured key string (random, at least 32 characters) into 32 key bytes."""
    return hashlib.sha256(secret.encode("utf-8")).digest()


def key_id(key: bytes) -> str:
    """Return the public identifier of a key: 8 hex digits of an HMAC, which reveals nothing of the key."""
    return hmac.new(key, b"id-number-key-id", hashlib.sha256).hexdigest()[:KEY_ID_LENGTH]


class KeyRing:
    """The current key, which encrypts, and older keys that only decrypt during a rotation."""

    def __init__(self, current: bytes, older: Sequence[bytes] = ()) -> None:
        self.current_id = key_id(current)
        self._ciphers: dict[str, AESGCM] = {}
        for key in (current, *older):
            identifier = key_id(key)
            if identifier in self._ciphers:
                continue  # the same key listed twice
            self._ciphers[identifier] = AESGCM(key)

    @property
    def key_ids(self) -> list[str]:
        """The configured key ids, current first."""
        return list(self._ciphers)

    def encrypt(self, plaintext: str, associated_data: bytes = ASSOCIATED_DATA) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[self.current_id].encrypt(nonce, plaintext.encode("utf-8"), associated_data)
        return f"{PREFIX}{self.current_id}:" + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def decrypt(self, token: str, associated_data: bytes = ASSOCIATED_DATA) -> str:
        identifier, raw = _split(token)
        if identifier is None:
            candidates = list(self._ciphers.values())
        elif identifier in self._ciphers:
            candidates = [self._ciphers[identifier]]
        else:
            raise DecryptionError(
                f"value was encrypted with key id {identifier}, which is neither ID_NUMBER_KEY "
                f"nor listed in ID_NUMBER_OLD_KEYS (configured key ids: {', '.join(self._ciphers)})"
            )
        for cipher in candidates:
            try:
                return cipher.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], associated_data).decode("utf-8")
            except InvalidTag:
                continue
        raise DecryptionError("value cannot be decrypted with the configured ID_NUMBER_KEY or ID_NUMBER_OLD_KEYS")

    def is_current(self, token: str) -> bool:
        """Tell whether `token` is already encrypted with the current key (a rotation skips it)."""
        return token.startswith(f"{PREFIX}{self.current_id}:")


def token_key_id(token: str) -> str | None:
    """Return the key id a ciphertext names, or None for the older "v1:" form."""
    return _split(token)[0]


def _split(token: str) -> tuple[str | None, bytes]:
    if token.startswith(PREFIX):
        identifier, separator, body = token[len(PREFIX):].partition(":")
        if not separator or len(identifier) != KEY_ID_LENGTH:
            raise DecryptionError("value is not an encrypted value (v2: without a key id)")
    elif token.startswith(PREFIX_V1):
        identifier, body = None, token[len(PREFIX_V1):]
    else:
        raise DecryptionError("value is not an encrypted value (missing the v1: or v2: prefix)")
    try:
        raw = base64.urlsafe_b64decode(body)
    except ValueError as error:
        raise DecryptionError("value is not an encrypted value (invalid base64)") from error
    if len(raw) <= NONCE_BYTES:
        raise DecryptionError("value is not an encrypted value (too short)")
    return identifier, raw


def encrypt(key: bytes, plaintext: str, associated_data: bytes = ASSOCIATED_DATA) -> str:
    return KeyRing(key).encrypt(plaintext, associated_data)


def decrypt(key: bytes, token: str, associated_data: bytes = ASSOCIATED_DATA) -> str:
    return KeyRing(key).decrypt(token, associated_data)


def keyed_hash(key: bytes, value: str) -> str:
    """HMAC-SHA256 of a normalised ID number, as 64 hex digits."""
    return hmac.new(key, value.strip().upper().encode("utf-8"), hashlib.sha256).hexdigest()
