"""ID numbers at rest: encrypting column types and the keyed hash used for lookups.

Keys come from the current app's configuration at each use: ID_NUMBER_KEY
encrypts, ID_NUMBER_OLD_KEYS (during a rotation) only decrypt, and
ID_HASH_KEY makes the lookup hashes. Three column types share one key ring:

- `EncryptedIdNumber`: one ID number (certificate, holder, certificate_version).
- `EncryptedJSON`: a whole JSON document that may contain ID numbers
  (batch_row.record, .cells, .changes), encrypted as one value, so a row
  costs one AES-GCM call per column, not one per cell.
- `EncryptedText`: free text that may quote an ID number (batch_row.reason,
  import_batch.report_csv). Empty text is stored as is.

`flask --app wsgi keys rotate-id-key` finds every column of these types
through `encrypted_columns`, so a new encrypted column is rotated with the rest.
"""

from __future__ import annotations

import json
from functools import lru_cache

from flask import current_app
from sqlalchemy import MetaData, String, Text
from sqlalchemy.schema import Column
from sqlalchemy.types import TypeDecorator

from .domain import crypto
from .domain.id_number_text import mask_id_numbers_in_text


def _secret(name: str) -> str:
    secret = current_app.config.get(name)
    if not secret:
        raise RuntimeError(f"{name} is not configured; ID numbers cannot be stored or read")
    return str(secret)


@lru_cache(maxsize=16)
def _hash_key(secret: str) -> bytes:
    return crypto.derive_key(secret)


@lru_cache(maxsize=16)
def _keyring(current: str, older: tuple[str, ...]) -> crypto.KeyRing:
    return crypto.KeyRing(crypto.derive_key(current), [crypto.derive_key(secret) for secret in older])


def keyring() -> crypto.KeyRing:
    """Return the key ring of the current app: ID_NUMBER_KEY encrypts, it and ID_NUMBER_OLD_KEYS decrypt."""
    older = tuple(str(secret) for secret in current_app.config.get("ID_NUMBER_OLD_KEYS") or () if secret)
    return _keyring(_secret("ID_NUMBER_KEY"), older)


def id_hash(value: str) -> str:
    """Return the lookup hash of an ID number, to compare with Certificate.id_number_hash or Holder.id_number_hash."""
    return crypto.keyed_hash(_hash_key(_secret("ID_HASH_KEY")), value)


class _Encrypted(TypeDecorator):
    """Base of the encrypting column types; `associated_data` binds a ciphertext to its kind of column."""

    impl = Text
    cache_ok = True
    associated_data = crypto.ASSOCIATED_DATA

    def seal(self, text: str) -> str:
        return keyring().encrypt(text, self.associated_data)

    def open(self, token: str) -> str:
        return keyring().decrypt(token, self.associated_data)


class EncryptedIdNumber(_Encrypted):
    """A text column that stores an ID number encrypted with ID_NUMBER_KEY and returns it decrypted."""

    impl = String(128)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        return self.seal(value)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return self.open(value)


class EncryptedJSON(_Encrypted):
    """A JSON document stored as one ciphertext; `purpose` (e.g. "batch_row.cells") is its associated data."""

    cache_ok = True

    def __init__(self, purpose: str) -> None:
        super().__init__()
        self.purpose = purpose
        self.associated_data = purpose.encode("ascii")

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        return self.seal(json.dumps(value, ensure_ascii=False, separators=(",", ":")))

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return json.loads(self.open(value))


class EncryptedText(_Encrypted):
    """Free text stored as a ciphertext; empty text stays empty, so it costs nothing."""

    cache_ok = True

    def __init__(self, purpose: str) -> None:
        super().__init__()
        self.purpose = purpose
        self.associated_data = purpose.encode("ascii")

    def process_bind_param(self, value, dialect):
        if not value:
            return value
        return self.seal(value)

    def process_result_value(self, value, dialect):
        if not value:
            return value
        return self.open(value)


def encrypted_columns(metadata: MetaData) -> list[Column]:
    """Return every column of `metadata` whose type encrypts with ID_NUMBER_KEY, in table order."""
    return [
        column
        for table in metadata.sorted_tables
        for column in table.columns
        if isinstance(column.type, _Encrypted)
    ]


def seal_id_numbers(values: list[str]) -> list[str]:
    """Encrypt ID numbers exactly as `EncryptedIdNumber` stores them, looking the key ring up once for the list.

    Bulk inserts that bypass the column type's per-row bind processing call
    this, and the ORM decrypts the results like any value it wrote itself.
    """
    ring = keyring()
    associated_data = EncryptedIdNumber.associated_data
    return [ring.encrypt(value, associated_data) for value in values]


def id_hashes(values: list[str]) -> list[str]:
    """Return `id_hash` of each ID number, deriving the hash key once for the list."""
    key = _hash_key(_secret("ID_HASH_KEY"))
    return [crypto.keyed_hash(key, value) for value in values]


def hash_default(context) -> str:
    """Column default for id_number_hash, so Core bulk inserts that give only id_number get the hash too."""
    return id_hash(context.get_current_parameters()["id_number"])




def mask_id_numbers(value):
    """Return `value` (text, or JSON-like lists and dicts of it) with every whole ID number masked (5001**********1234).

    For free text that is kept in clear, such as audit details and staff reasons. Numbers
    attached to letters, in full-width digits or split by spaces or hyphens are found too
    (see domain.id_number_text).
    Other document types (passports and the like) have no fixed shape and are not found.
    """
    if isinstance(value, str):
        return mask_id_numbers_in_text(value)
    if isinstance(value, dict):
        return {key: mask_id_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [mask_id_numbers(item) for item in value]
    return value
