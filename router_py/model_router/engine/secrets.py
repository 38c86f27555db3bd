"""The secrets the router holds, and their removal from anything it relays.

A provider's error body can echo what it was sent (an `Authorization`
header, a key in a message): before such text reaches a caller it passes
through `Redactor.redact`, which replaces every secret the router holds —
each endpoint's provider key, the admin and metrics keys, the Redis password — with
`[REDACTED]`. What a non-admin caller sees of a provider's error is only its
type and message, capped.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import msgspec

from .live import LiveConfig
from .providers import api_key

REDACTED = "[REDACTED]"
MIN_SECRET = 6  # shorter values would redact ordinary words
MAX_MESSAGE = 500  # characters of a provider's error message shown to a caller


class Redactor:
    def __init__(self, live: LiveConfig, fixed: list[str | None], redis_url: str | None):
        self.live = live
        password = urlsplit(redis_url).password if redis_url else None
        self._fixed = [s for s in (*fixed, password) if s]

    def secrets(self) -> list[str]:
        """Every secret, longest first (a key that contains another goes whole).
        Read each time (failures only): a rotated key file counts at once."""
        keys = {api_key(e) or "" for e in self.live.endpoints.values()}
        found = {s for s in (*keys, *self._fixed) if len(s) >= MIN_SECRET}
        return sorted(found, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets():
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def redact_json(self, value: Any) -> Any:
        """A JSON-able value with every secret removed from every string in it."""
        encoded = msgspec.json.encode(value).decode()
        cleaned = self.redact(encoded)
        return value if cleaned == encoded else msgspec.json.decode(cleaned)


def provider_error(body: Any) -> dict[str, Any]:
    """What a non-admin caller may see of a provider's error: its type and
    message, capped (OpenAI's and Anthropic's shapes, or the text)."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        kind, message = error.get("type"), error.get("message")
    else:
        kind, message = None, body if isinstance(body, str) else None
    shown: dict[str, Any] = {}
    if isinstance(kind, str):
        shown["type"] = kind[:100]
    if isinstance(message, str):
        shown["message"] = message[:MAX_MESSAGE]
    return shown
