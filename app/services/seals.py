"""Official seal images and codes: install, list and audit (the admin seals page)."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

from flask import current_app
from sqlalchemy import select

from ..domain import catalogue as domain
from ..domain.seals import SealUploadError, seal_png, validate_seal_code, validate_seal_png
from ..extensions import db
from ..models import AuditEntry, Seal

logger = logging.getLogger(__name__)

SEAL_DIR = "seals"  # under the instance folder


def all_seals() -> list[Seal]:
    return list(db.session.scalars(select(Seal).order_by(Seal.id)))


def get_seal(seal_id: int) -> Seal | None:
    return db.session.get(Seal, seal_id)


def preview_png(seal: Seal) -> bytes:
    """Return the seal exactly as certificates print it: the installed image, or the 样章 specimen."""
    return seal_png(
        domain.Seal(code=seal.code, name=seal.name, image_path=seal.image_path),
        static_dir=Path(current_app.static_folder),
        instance_dir=Path(current_app.instance_path),
    )


def update_seal(seal: Seal, *, code: str, image: bytes | None, actor: str) -> list[str]:
    """Set the seal code and install `image` when given, and return the names of the changed fields.

    Raises SealUploadError with a message for staff. Writes one audit entry per
    changed field in the same transaction.
    """
    code = validate_seal_code(code)
    if code != seal.code and db.session.scalar(select(Seal.id).where(Seal.code == code, Seal.id != seal.id)):
        raise SealUploadError(f"印章编码「{code}」已被另一枚印章使用，请核对后重新填写。")
    if image is not None:
        validate_seal_png(image)

    changed: list[str] = []
    if code != seal.code:
        db.session.add(AuditEntry(actor=actor, action="seal.code", target=f"seal:{seal.id}",
                                  detail={"before": seal.code, "after": code}))
        seal.code = code
        changed.append("code")
    if image is not None:
        relative = f"{SEAL_DIR}/official-{secrets.token_hex(8)}.png"
        path = Path(current_app.instance_path) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image)
        db.session.add(AuditEntry(actor=actor, action="seal.image", target=f"seal:{seal.id}",
                                  detail={"before": seal.image_path, "after": relative, "bytes": len(image)}))
        seal.image_path = relative
        changed.append("image")
    db.session.commit()
    logger.info("seal %s updated by %s: %s", seal.id, actor, ", ".join(changed) or "no change")
    return changed


def reset_to_specimen(seal: Seal, *, actor: str) -> None:
    """Stop using the installed image, so certificates print the 样章 specimen again."""
    if seal.image_path is None:
        return
    db.session.add(AuditEntry(actor=actor, action="seal.specimen", target=f"seal:{seal.id}",
                              detail={"before": seal.image_path, "after": None}))
    seal.image_path = None
    db.session.commit()
    logger.info("seal %s reset to the specimen by %s", seal.id, actor)
