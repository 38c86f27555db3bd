"""What a decision needs from a request body: its request type and content
length, and what an engine error means for the HTTP answer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._core import Decision

DEFAULT_REQUEST_TYPE = "chat"

# Engine error kind -> HTTP status of the answer.
ERROR_STATUS = {
    "budget_exceeded": 402,
    "unknown_model": 404,
    "no_eligible_model": 503,
    "breakers_open": 503,
}


def request_type(explicit: str | None, metadata: Mapping[str, Any] | None) -> str:
    """The body's requestType, else metadata.requestType, else chat."""
    if explicit:
        return explicit
    named = (metadata or {}).get("requestType")
    return named if isinstance(named, str) and named else DEFAULT_REQUEST_TYPE


def content_length(prompt: str | None, messages: list[dict[str, Any]] | None) -> int:
    """Characters of the prompt and of every message's text content (strings,
    or the text parts of OpenAI's content arrays)."""
    total = len(prompt) if prompt else 0
    for message in messages or ():
        content = message.get("content")
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += len(part["text"])
    return total


def error_details(decision: Decision) -> dict[str, Any] | None:
    if decision.budget is not None:
        period, limit, spent = decision.budget
        return {"period": period, "limit": limit, "spent": round(spent, 9)}
    return None
