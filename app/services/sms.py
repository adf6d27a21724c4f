"""Text messages to holders' mobile numbers (password reset codes).

SMS_SENDER chooses the sender:

- "outbox" keeps messages in memory (per process) for development and tests.
- "http" posts each message to the bureau's SMS gateway at SMS_GATEWAY_URL as
  JSON `{"phone": "...", "text": "..."}` with `Authorization: Bearer
  SMS_GATEWAY_TOKEN`, and takes any 2xx response as accepted. A gateway with
  another protocol (a signed vendor API) needs a sender class of its own with
  the same `send(phone, text)` method.

Neither sender logs a whole mobile number or the text, which carries the code.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

from flask import current_app

logger = logging.getLogger(__name__)


class SmsError(RuntimeError):
    """The gateway did not accept a message. The error gives the reason and the masked number, never the text."""


class Sender(Protocol):
    def send(self, phone: str, text: str) -> None: ...


def masked_phone(phone: str) -> str:
    return phone[:3] + "****" + phone[-4:]


@dataclass
class OutboxSender:
    """Keeps messages in memory (per process) instead of sending them; logs only the masked number."""

    messages: list[tuple[str, str]] = field(default_factory=list)

    def send(self, phone: str, text: str) -> None:
        self.messages.append((phone, text))
        logger.info("SMS to %s kept in the development outbox (%s messages)", masked_phone(phone), len(self.messages))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Treat a redirect as a failure, so a message is never re-posted to an address the configuration does not name."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class HttpGatewaySender:
    """Posts each message as JSON to an HTTP(S) SMS gateway with a bearer token."""

    def __init__(self, url: str, token: str, timeout_seconds: float) -> None:
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise ValueError(f"SMS_GATEWAY_URL must be an http:// or https:// address, not {url!r}")
        self.url = url
        self.token = token
        self.timeout_seconds = timeout_seconds
        # No proxy from the environment and no redirects: the message goes to SMS_GATEWAY_URL or nowhere.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)

    def send(self, phone: str, text: str) -> None:
        """Post one message; raise SmsError when the gateway is unreachable, times out or responds with other than 2xx."""
        body = json.dumps({"phone": phone, "text": text}, ensure_ascii=False).encode("utf-8")
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json; charset=utf-8", "Authorization": f"Bearer {self.token}"},
        )
        try:
            with self._opener.open(request, timeout=self.timeout_seconds) as response:
                status = response.status
        except urllib.error.HTTPError as error:
            error.close()  # the error carries the open response
            raise SmsError(f"SMS gateway responded with HTTP {error.code} for {masked_phone(phone)}") from None
        except TimeoutError:
            raise SmsError(
                f"SMS gateway timed out after {self.timeout_seconds} s for {masked_phone(phone)}"
            ) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise SmsError(f"SMS gateway unreachable for {masked_phone(phone)}: {reason}") from None
        if not 200 <= status < 300:
            raise SmsError(f"SMS gateway responded with HTTP {status} for {masked_phone(phone)}")
        logger.info("SMS to %s accepted by the gateway (HTTP %s)", masked_phone(phone), status)


def sms_sender() -> Sender:
    """Return the sender SMS_SENDER names; raise RuntimeError for an unknown name or a missing gateway setting."""
    config = current_app.config
    kind = config["SMS_SENDER"]
    if kind == "outbox":
        return current_app.extensions.setdefault("sms_outbox", OutboxSender())
    if kind == "http":
        missing = [name for name in ("SMS_GATEWAY_URL", "SMS_GATEWAY_TOKEN") if not config.get(name)]
        if missing:
            raise RuntimeError(f"SMS_SENDER='http' needs {' and '.join(missing)} in the configuration")
        return HttpGatewaySender(
            config["SMS_GATEWAY_URL"], config["SMS_GATEWAY_TOKEN"], float(config["SMS_GATEWAY_TIMEOUT_SECONDS"])
        )
    raise RuntimeError(f"SMS_SENDER={kind!r} is not a sender; use 'outbox' or 'http'")
