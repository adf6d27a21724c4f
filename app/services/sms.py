"""Text messages to holders' mobile numbers (password reset codes).

No SMS gateway is connected here. `SMS_SENDER = "outbox"` keeps messages in
memory for development and tests; a deployment with a gateway adds a sender
class with the same `send` method and names it in SMS_SENDER.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from flask import current_app

logger = logging.getLogger(__name__)


@dataclass
class OutboxSender:
    """Keeps messages in memory (per process) instead of sending them; logs only the masked number."""

    messages: list[tuple[str, str]] = field(default_factory=list)

    def send(self, phone: str, text: str) -> None:
        self.messages.append((phone, text))
        logger.info("SMS to %s kept in the development outbox (%s messages)", phone[:3] + "****" + phone[-4:], len(self.messages))


def sms_sender() -> OutboxSender:
    kind = current_app.config["SMS_SENDER"]
    if kind != "outbox":
        raise RuntimeError(f"SMS_SENDER={kind!r} is not implemented; only 'outbox' exists")
    return current_app.extensions.setdefault("sms_outbox", OutboxSender())
