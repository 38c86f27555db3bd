"""Provider adapters: OpenAI's chat-completions shape in, each provider's wire
format out, and back again.

The router speaks OpenAI's format inside (its own OpenAI-compatible API is the
same shape), so `openai`, `azure` and `custom` (vLLM, Ollama, llama.cpp, any
OpenAI-compatible server) differ only in URL and credentials; `anthropic`
translates the Messages API both ways, its stream included.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol

import msgspec

from .. import types as t
from .sse import Event
from .upstream import UpstreamRequest

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

ANTHROPIC_VERSION = "2023-06-01"
ANTHROPIC_DEFAULT_MAX_TOKENS = 1024
ANTHROPIC_STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


class MalformedUpstream(Exception):
    """The upstream answered 200 with a body we cannot read."""


@dataclass
class Completion:
    """A whole answer: OpenAI's chat.completion JSON, and what the router reads of it."""

    body: bytes
    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str | None


class _Message(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    message: _Message
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _ChatCompletion(msgspec.Struct):
    """The parts of an OpenAI chat.completion the router reads; the body
    itself is passed on as the provider sent it."""

    choices: Annotated[list[_Choice], msgspec.Meta(min_length=1)]
    usage: _Usage | None = None


_read_completion = msgspec.json.Decoder(_ChatCompletion).decode


@dataclass
class StreamState:
    """What a stream told us so far, for accounting and error detection."""

    text_chars: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None
    done: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Adapter(Protocol):
    def request(
        self, endpoint: t.Endpoint, upstream_model: str, chat: dict[str, Any]
    ) -> UpstreamRequest: ...

    def completion(self, body: bytes, model_id: str) -> Completion: ...

    def translate(self, event: Event, state: StreamState, model_id: str) -> list[bytes]:
        """OpenAI SSE bytes to forward for one upstream event (may be none)."""
        ...


def _api_key(endpoint: t.Endpoint) -> str | None:
    return os.environ.get(endpoint.api_key_env) if endpoint.api_key_env else None


def _usage(body: dict[str, Any]) -> tuple[int | None, int | None]:
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return None, None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (
        prompt if isinstance(prompt, int) else None,
        completion if isinstance(completion, int) else None,
    )


class OpenAIAdapter:
    """OpenAI, and any OpenAI-compatible server (`custom`): Bearer auth."""

    def headers(self, endpoint: t.Endpoint) -> dict[str, str]:
        key = _api_key(endpoint)
        headers = {"content-type": "application/json"}
        if key:
            headers["authorization"] = f"Bearer {key}"
        return headers

    def request(
        self, endpoint: t.Endpoint, upstream_model: str, chat: dict[str, Any]
    ) -> UpstreamRequest:
        return UpstreamRequest(
            endpoint.url, self.headers(endpoint), _encode({**chat, "model": upstream_model})
        )

    def completion(self, body: bytes, model_id: str) -> Completion:
        try:
            doc = _read_completion(body)
        except msgspec.DecodeError:  # ValidationError included
            raise MalformedUpstream(f"not a chat completion: {body[:200]!r}") from None
        choice, usage = doc.choices[0], doc.usage or _Usage()
        return Completion(
            body,
            choice.message.content or "",
            usage.prompt_tokens,
            usage.completion_tokens,
            choice.finish_reason,
        )

    def translate(self, event: Event, state: StreamState, model_id: str) -> list[bytes]:
        if event.data == b"[DONE]":
            state.done = True
            return [event.raw]
        try:
            chunk = _decode(event.data)
        except msgspec.DecodeError:
            state.error = f"malformed stream event: {event.data[:200]!r}"
            return []
        if not isinstance(chunk, dict) or "error" in chunk:
            state.error = f"error event in stream: {event.data[:300]!r}"
            return []
        for choice in chunk.get("choices") or ():
            content = (choice.get("delta") or {}).get("content")
            if isinstance(content, str):
                state.text_chars += len(content)
        prompt, completion = _usage(chunk)
        if prompt is not None:
            state.prompt_tokens, state.completion_tokens = prompt, completion
        return [event.raw]


class AzureAdapter(OpenAIAdapter):
    """Azure OpenAI: the deployment and api-version live in the URL; the key
    goes in an `api-key` header."""

    def headers(self, endpoint: t.Endpoint) -> dict[str, str]:
        key = _api_key(endpoint)
        headers = {"content-type": "application/json"}
        if key:
            headers["api-key"] = key
        return headers


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def _anthropic_content(content: Any) -> str | list[dict[str, Any]]:
    if isinstance(content, list):
        return [
            {"type": "text", "text": p.get("text", "")}
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        ]
    return content if isinstance(content, str) else ""


class AnthropicAdapter:
    """Anthropic's Messages API, both ways."""

    def request(
        self, endpoint: t.Endpoint, upstream_model: str, chat: dict[str, Any]
    ) -> UpstreamRequest:
        system = [_text(m.get("content")) for m in chat["messages"] if m.get("role") == "system"]
        messages = [
            {
                "role": "assistant" if m.get("role") == "assistant" else "user",
                "content": _anthropic_content(m.get("content")),
            }
            for m in chat["messages"]
            if m.get("role") != "system"
        ]
        body: dict[str, Any] = {
            "model": upstream_model,
            "messages": messages,
            "max_tokens": chat.get("max_tokens")
            or chat.get("max_completion_tokens")
            or ANTHROPIC_DEFAULT_MAX_TOKENS,
        }
        if system:
            body["system"] = "\n\n".join(system)
        if chat.get("temperature") is not None:
            body["temperature"] = min(1.0, float(chat["temperature"]))  # Anthropic's range is 0..1
        if chat.get("top_p") is not None:
            body["top_p"] = chat["top_p"]
        stop = chat.get("stop")
        if stop:
            body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        if chat.get("stream"):
            body["stream"] = True
        headers = {"content-type": "application/json", "anthropic-version": ANTHROPIC_VERSION}
        key = _api_key(endpoint)
        if key:
            headers["x-api-key"] = key
        return UpstreamRequest(endpoint.url, headers, _encode(body))

    def completion(self, body: bytes, model_id: str) -> Completion:
        try:
            doc = _decode(body)
            text = "".join(b.get("text", "") for b in doc["content"] if b.get("type") == "text")
            usage = doc.get("usage") or {}
            prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
            message_id, stop = doc.get("id", ""), doc.get("stop_reason")
        except (msgspec.DecodeError, KeyError, TypeError, AttributeError):
            raise MalformedUpstream(f"not an Anthropic message: {body[:200]!r}") from None
        openai: dict[str, Any] = {
            "id": f"chatcmpl-{message_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_id,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": ANTHROPIC_STOP_REASONS.get(stop or "", "stop"),
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt or 0,
                "completion_tokens": completion or 0,
                "total_tokens": (prompt or 0) + (completion or 0),
            },
        }
        finish = openai["choices"][0]["finish_reason"]
        return Completion(_encode(openai), text, prompt, completion, finish)

    def translate(self, event: Event, state: StreamState, model_id: str) -> list[bytes]:
        try:
            doc = _decode(event.data) if event.data else {}
        except msgspec.DecodeError:
            state.error = f"malformed stream event: {event.data[:200]!r}"
            return []
        kind = event.name or doc.get("type")
        if kind == "error":
            state.error = f"error event in stream: {event.data[:300]!r}"
            return []
        if kind == "message_start":
            message = doc.get("message") or {}
            state.extra["id"] = f"chatcmpl-{message.get('id', '')}"
            state.extra["created"] = int(time.time())
            state.prompt_tokens = (message.get("usage") or {}).get("input_tokens")
            return [self._chunk(state, model_id, {"role": "assistant", "content": ""}, None)]
        if kind == "content_block_delta":
            text = (doc.get("delta") or {}).get("text")
            if isinstance(text, str) and text:
                state.text_chars += len(text)
                return [self._chunk(state, model_id, {"content": text}, None)]
            return []
        if kind == "message_delta":
            state.completion_tokens = (doc.get("usage") or {}).get("output_tokens")
            stop = (doc.get("delta") or {}).get("stop_reason") or ""
            return [self._chunk(state, model_id, {}, ANTHROPIC_STOP_REASONS.get(stop, "stop"))]
        if kind == "message_stop":
            state.done = True
            out = []
            if state.extra.get("include_usage"):
                prompt, completion = state.prompt_tokens or 0, state.completion_tokens or 0
                usage = {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                }
                out.append(self._chunk(state, model_id, None, None, usage))
            return [*out, b"data: [DONE]\n\n"]
        return []  # ping, content_block_start/stop

    @staticmethod
    def _chunk(
        state: StreamState,
        model_id: str,
        delta: dict[str, Any] | None,
        finish: str | None,
        usage: dict[str, int] | None = None,
    ) -> bytes:
        chunk: dict[str, Any] = {
            "id": state.extra.get("id", "chatcmpl-"),
            "object": "chat.completion.chunk",
            "created": state.extra.get("created", int(time.time())),
            "model": model_id,
            "choices": []
            if delta is None
            else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        if usage is not None:
            chunk["usage"] = usage
        return b"data: " + _encode(chunk) + b"\n\n"


ADAPTERS: dict[str, Adapter] = {
    "openai": OpenAIAdapter(),
    "custom": OpenAIAdapter(),
    "azure": AzureAdapter(),
    "anthropic": AnthropicAdapter(),
}
