"""Translation between the two wire formats agents and providers speak:
OpenAI's chat completions and Anthropic's Messages API.

Each direction is one module holding everything that produces its format:
`to_anthropic` (OpenAI request -> Anthropic request, OpenAI answer ->
Anthropic message, OpenAI chunks -> Anthropic events) and `to_openai` (the
mirror image). `wire` declares what the router reads of each format. The
mapping, field by field, is in docs/providers.md.

What one side cannot express is refused with `Refused`, naming the
parameter, never dropped without a word; a model lists in `dropParams` the
parameters its operators would rather see dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from .wire import AnthropicUsage, OpenAIUsage

T = TypeVar("T")


class Refused(Exception):
    """The request asks for something the chosen provider cannot do, or is
    not what the API accepts: a 400 naming `param`.

    Translators name parameters relative to what they are looking at and
    prefix the path on the way out (`within`), so the happy path builds no
    names at all; `{param}` in the reason stands for the full name."""

    def __init__(self, param: str, reason: str, code: str = "unsupported_parameter"):
        super().__init__(reason)
        self.param = param
        self.reason = reason
        self.code = code

    @property
    def message(self) -> str:
        return self.reason.replace("{param}", self.param)

    def __str__(self) -> str:
        return self.message

    def within(self, prefix: str) -> Refused:
        joint = "" if not self.param or self.param.startswith("[") else "."
        self.param = prefix + joint + self.param
        return self


def invalid(param: str, reason: str) -> Refused:
    return Refused(param, reason, "invalid_parameter")


@dataclass(slots=True)
class Tokens:
    """A call's token counts. `prompt` counts every prompt token, cached ones
    included (OpenAI's meaning); None: the provider did not say."""

    prompt: int | None = None
    completion: int | None = None
    cache_read: int = 0
    cache_write: int = 0

    def add_openai(self, usage: OpenAIUsage) -> None:
        self.prompt, self.completion = usage.prompt_tokens, usage.completion_tokens
        details = usage.prompt_tokens_details
        if details is not None:
            self.cache_read = details.cached_tokens or 0
            self.cache_write = details.cache_creation_tokens or 0

    def add_anthropic(self, usage: AnthropicUsage) -> None:
        """Anthropic counts input, cache reads and cache writes apart; their
        sum is the prompt. A message_delta repeats or updates what it knows."""
        if usage.cache_read_input_tokens is not None:
            self.cache_read = usage.cache_read_input_tokens
        if usage.cache_creation_input_tokens is not None:
            self.cache_write = usage.cache_creation_input_tokens
        if usage.input_tokens is not None:
            self.prompt = usage.input_tokens + self.cache_read + self.cache_write
        if usage.output_tokens is not None:
            self.completion = usage.output_tokens

    def openai_usage(self) -> dict[str, Any]:
        prompt, completion = self.prompt or 0, self.completion or 0
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        if self.cache_read or self.cache_write:
            usage["prompt_tokens_details"] = {
                "cached_tokens": self.cache_read,
                "cache_creation_tokens": self.cache_write,
            }
        return usage

    def anthropic_usage(self) -> dict[str, int]:
        cached = self.cache_read + self.cache_write
        return {
            "input_tokens": max(0, (self.prompt or 0) - cached),
            "output_tokens": self.completion or 0,
            "cache_read_input_tokens": self.cache_read,
            "cache_creation_input_tokens": self.cache_write,
        }


def each(items: list[Any], translate: Callable[[Any], T], name: str) -> list[T]:
    """Every item translated; a refusal names the item's place in `name`."""
    out = []
    for j, item in enumerate(items):
        try:
            out.append(translate(item))
        except Refused as refused:
            raise refused.within(f"{name}[{j}]") from None
    return out


def present(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters actually given: an explicit null means absent."""
    return {k: v for k, v in body.items() if v is not None}


def refuse_unknown(
    params: Mapping[str, Any], handled: frozenset[str], provider: str, drop: frozenset[str]
) -> None:
    """Any parameter the translation does not handle is refused (unless the
    model drops it): a request never silently loses what it asked for."""
    for name in params:
        if name not in handled and name not in drop:
            raise Refused(name, f"'{name}' is not supported by {provider} models")


def number(params: Mapping[str, Any], name: str, low: float, high: float, provider: str) -> Any:
    value = params[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(name, "'{param}' must be a number")
    if not low <= value <= high:
        raise Refused(
            name, f"'{{param}}' must be between {low:g} and {high:g} for {provider} models"
        )
    return value


def text_of(content: Any, param: str) -> str:
    """A message content that may only hold text: a string or text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise Refused(f"{param}[{j}]", "{param} may only be text here")
            texts.append(string(part.get("text"), f"{param}[{j}].text"))
        return "\n\n".join(texts)
    raise invalid(param, "'{param}' must be a string or a list of text parts")


def string(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise invalid(param, "'{param}' must be a string")
    return value


def data_url(media_type: str, data: str) -> str:
    return f"data:{media_type};base64,{data}"


def parse_data_url(url: str, param: str) -> tuple[str, str]:
    """(media type, base64 data) of a `data:` URL."""
    head, sep, data = url.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64") or not data:
        raise invalid(param, "'{param}' must be an http(s) URL or a base64 data URL")
    return head[5:-7], data
