"""ID numbers at rest: an encrypting column type and the keyed hash used for lookups.

Keys come from ID_NUMBER_KEY (encryption) and ID_HASH_KEY (lookups), read from
the current app's configuration at each use.
"""

from __future__ import annotations

from flask import current_app
from sqlalchemy import String
from sqlalchemy.types import TypeDecorator

from .domain import crypto


def _key(name: str) -> bytes:
    secret = current_app.config.get(name)
    if not secret:
        raise RuntimeError(f"{name} is not configured; ID numbers cannot be stored or read")
    return crypto.derive_key(str(secret))


def id_hash(value: str) -> str:
    """Return the lookup hash of an ID number, to compare with Certificate.id_number_hash or Holder.id_number_hash."""
    return crypto.keyed_hash(_key("ID_HASH_KEY"), value)


class EncryptedIdNumber(TypeDecorator):
    """A text column that stores an ID number encrypted with ID_NUMBER_KEY and returns it decrypted."""

    impl = String(128)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        return crypto.encrypt(_key("ID_NUMBER_KEY"), value)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return crypto.decrypt(_key("ID_NUMBER_KEY"), value)


def hash_default(context) -> str:
    """Column default for id_number_hash, so Core bulk inserts that give only id_number get the hash too."""
    return id_hash(context.get_current_parameters()["id_number"])
