"""Masking personal data and secrets in log lines, at every level.

Applied to every string of a log entry (the message, each extra field, an
exception), so nothing that reaches a log escapes it. Each pattern runs only
when a cheap test says it could match; the short strings a request's line
repeats (its route, model, endpoint, agent, the message) are masked once and
remembered, and the router's own request ids skip the patterns (see `mask`):
that keeps masking the line of a routed request to a microsecond or two.
"""

from __future__ import annotations

import functools
import re
import secrets

# Nine or more digits with at most two separators between two of them: what
# a card or phone number needs at the least.
_DIGIT_RUN = re.compile(r"\d(?:[\s().-]{0,2}\d){8}")
_SECRET_WORDS = ("key", "authorization", "password", "secret", "token")

_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_OUR_KEY = re.compile(r"\bmr_[0-9a-f]+_[A-Za-z0-9_-]{8,}")
# OpenAI/Anthropic (sk-...), Stripe (sk_live_...), AWS, GitHub, Google keys,
# and bare JWTs (a base64url JSON header, always "eyJ...").
_VENDOR_KEY = re.compile(
    r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}"
    r"|\b(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{10,}"
    r"|\bAKIA[0-9A-Z]{16}\b"
    r"|\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})"
    r"|\bAIza[0-9A-Za-z_-]{30,}"
    r"|\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}"
)
_VENDOR_HINTS = ("k-", "k_", "AKIA", "gh", "AIza", "eyJ")
_SECRET_VALUE = re.compile(
    r"(?i)\b(api[-_]?key|x-api-key|authorization|password|secret|token)"
    r"([\"']?\s*[:=]\s*[\"']?)[^\s\"',}]{6,}"
)
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
# Card numbers: 13-19 digits, optionally grouped by spaces, dots or dashes.
_CARD = re.compile(r"\b(?:\d[ .-]?){12,18}\d\b")
# Phone numbers: an optional +country code, an optional (area code), then
# groups of digits with separators: +1 415-555-0132, (555) 123-4567,
# +33 1 42 68 53 00. Nine digits at least (checked on the match).
_PHONE = re.compile(
    r"(?<![\w.])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)|\d{1,4})(?:[\s.-]?\d{2,4}){2,4}(?![\w.])"
)


def _phone(match: re.Match[str]) -> str:
    digits = sum(c.isdigit() for c in match.group())
    return "[PHONE]" if digits >= 9 else match.group()


# Lowercase hex digits only, as the router's request ids (`http.new_id`).
_HEX = re.compile(r"[0-9a-f]+")
# Strings up to this long are remembered (at most _REMEMBERED of them).
_SHORT = 64
_REMEMBERED = 1024


def hex_id(nbytes: int) -> str:
    """Random hex for an id that log lines name: never all digits, which
    masking would read as a phone or card number (1 draw in 280 of 6 bytes)."""
    while (drawn := secrets.token_hex(nbytes)).isdigit():
        pass
    return drawn


def mask(text: str) -> str:
    """The text with personal data and secrets replaced by placeholders."""
    return _remembered(text) if len(text) <= _SHORT else _mask(text)


def _mask_short(text: str) -> str:
    # A hex word with a letter in it holds none of the words or "@" the
    # patterns need, and \b and the phone pattern's look-arounds see a word
    # boundary only at its two ends: a card or phone number would have to be
    # all of it, and it is not all digits.
    if _HEX.fullmatch(text) and not text.isdigit():
        return text
    return _mask(text)


def _mask(text: str) -> str:
    lower = text.lower()
    if "bearer" in lower or "basic" in lower:
        text = _BEARER.sub(r"\1 [REDACTED]", text)
    if "mr_" in text:
        text = _OUR_KEY.sub("[API_KEY]", text)
    if any(hint in text for hint in _VENDOR_HINTS):
        text = _VENDOR_KEY.sub("[API_KEY]", text)
    if any(word in lower for word in _SECRET_WORDS):
        text = _SECRET_VALUE.sub(r"\1\2[REDACTED]", text)
    if "@" in text:
        text = _EMAIL.sub("[EMAIL]", text)
    if _DIGIT_RUN.search(text):
        text = _PHONE.sub(_phone, _CARD.sub("[CARD]", text))
    return text


_remembered = functools.lru_cache(maxsize=_REMEMBERED)(_mask_short)
