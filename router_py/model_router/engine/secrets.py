"""The secrets the router holds, and their removal from anything it relays.

A provider's error body can echo what it was sent (an `Authorization`
header, a key in a message): before such text reaches a caller it passes
through `Redactor.redact`, which replaces every secret the router holds —
each endpoint's provider key, the admin key, the Redis password — with
`[REDACTED]`. What a non-admin caller sees of a provider's error is only its
type and message, capped.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

import msgspec

from .live import LiveConfig

REDACTED = "[REDACTED]"
MIN_SECRET = 6  # shorter values would redact ordinary words
MAX_MESSAGE = 500  # characters of a provider's error message shown to a caller


class Redactor:
    def __init__(self, live: LiveConfig, admin_key: str | None, redis_url: str | None):
        self.live = live
        password = urlsplit(redis_url).password if redis_url else None
        self._fixed = [s for s in (admin_key, password) if s]
        self._version = -1
        self._secrets: list[str] = []

    def secrets(self) -> list[str]:
        """Every secret, longest first (a key that contains another goes whole)."""
        if self._version != self.live.version:
            keys = {
                os.environ.get(e.api_key_env, "")
                for e in self.live.endpoints.values()
                if e.api_key_env
            }
            found = [s for s in (*keys, *self._fixed) if len(s) >= MIN_SECRET]
            self._secrets = sorted(set(found), key=len, reverse=True)
            self._version = self.live.version
        return self._secrets

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
