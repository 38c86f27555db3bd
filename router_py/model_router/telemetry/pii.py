"""Masking personal data and secrets in log lines, at every level.

Applied to the whole formatted line, so nothing that reaches a log (a
message, an extra field, an exception) escapes it.
"""

from __future__ import annotations

import re

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # Bearer tokens and our own keys before the generic secrets below.
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 [REDACTED]"),
    (re.compile(r"\bmr_[0-9a-f]+_[A-Za-z0-9_-]{8,}"), "[API_KEY]"),
    (re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}"), "[API_KEY]"),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), "[API_KEY]"),
    (
        re.compile(
            r"(?i)\b(api[-_]?key|x-api-key|authorization|password|secret|token)([\"']?\s*[:=]\s*[\"']?)[^\s\"',}]{6,}"
        ),
        r"\1\2[REDACTED]",
    ),
    (re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"), "[EMAIL]"),
    # Card numbers: 13-19 digits, optionally grouped by spaces or dashes.
    (re.compile(r"\b(?:\d[ -]?){12,18}\d\b"), "[CARD]"),
    # Phone numbers: an optional +country code, then 9+ digits with separators.
    (
        re.compile(
            r"(?<![\w.])\+?\d{1,3}[\s.-]?\(?\d{2,4}\)?[\s.-]?\d{3,4}[\s.-]?\d{3,4}(?![\w.])"
        ),
        "[PHONE]",
    ),
]


def mask(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text
