"""How one front door's request is exchanged with one kind of provider.

A front door (OpenAI's chat completions, Anthropic's messages, embeddings,
legacy completions, the Responses API) and a provider's wire format select
an `Exchange`: it makes the upstream body, reads the whole answer and reads
(and, across formats, translates) the stream, event by event. Same-format
traffic passes through as sent, byte for byte: only `model` is set (and
parameters the model drops removed); the answer is read for accounting, not
rewritten.

Reading is typed (translate/wire.py; a same-format whole answer, the core's
wire.rs, to the same shapes): anything a provider sends that does not decode
raises, and the executor counts the attempt as malformed.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from .. import types as t
from .._core import read_anthropic_message, read_openai_chat, same_format_body
from .sse import Event
from .translate import Refused, Tokens, to_anthropic, to_openai, wire

if TYPE_CHECKING:
    from .._core import _AnswerReading

_encode = msgspec.json.Encoder().encode
DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; a model's own limit wins


class Format(enum.Enum):
    """A provider's wire format."""

    OPENAI = "openai"  # OpenAI, Azure OpenAI, and OpenAI-compatible servers
    ANTHROPIC = "anthropic"


class Operation(enum.Enum):
    """What a front door asks for; `model_types` may serve it."""

    CHAT = ("chat", frozenset({"chat", "multimodal"}))
    MESSAGES = ("messages", frozenset({"chat", "multimodal"}))
    EMBEDDINGS = ("embeddings", frozenset({"embedding"}))
    COMPLETIONS = ("completions", frozenset({"completion"}))
    RESPONSES = ("responses", frozenset({"chat", "multimodal"}))

    def __init__(self, label: str, model_types: frozenset[str]):
        self.label = label
        self.model_types = model_types


@dataclass
class Answer:
    """A whole answer, in the caller's format, and what accounting reads."""

    body: bytes
    text: str
    tokens: Tokens
    finish_reason: str | None = None


@dataclass
class StreamState:
    """What a stream told us so far."""

    tokens: Tokens = field(default_factory=Tokens)
    text_chars: int = 0
    # Content has come (or the answer ended): from here on the stream is the
    # caller's, and failing over is no longer possible. Until then events are
    # held back, so a provider that breaks before its first token is failed
    # over like one that never answered.
    started: bool = False
    done: bool = False
    error: str | None = None


class StreamReader(abc.ABC):
    """Reads one provider stream."""

    def __init__(self) -> None:
        self.state = StreamState()

    @abc.abstractmethod
    def feed(self, event: Event) -> list[bytes]:
        """The bytes to send the caller for one event (the event itself when
        nothing is translated). Raises on an event it cannot read."""


class OpenAIChunks(StreamReader):
    def __init__(self, writer: to_anthropic.StreamWriter | None = None):
        super().__init__()
        self.writer = writer

    def feed(self, event: Event) -> list[bytes]:
        state = self.state
        if event.data == b"[DONE]":
            state.done = state.started = True
            return self.writer.finish() if self.writer else [event.raw]
        chunk = wire.decode_openai_chunk(event.data)
        if chunk.error is not None:
            state.error = f"error event in stream: {event.data[:300]!r}"
            return []
        for choice in chunk.choices:
            delta = choice.delta
            if delta is not None and (delta.content or delta.tool_calls or delta.refusal):
                state.started = True
                state.text_chars += len(delta.content or "")
            if choice.finish_reason:
                state.started = True
        if chunk.usage is not None:
            state.tokens.add_openai(chunk.usage)
        return self.writer.feed(chunk) if self.writer else [event.raw]


# Events that are content, or the message's end; before them, only its start.
ANTHROPIC_CONTENT_EVENTS = frozenset({"content_block_delta", "message_delta", "message_stop"})


class AnthropicEvents(StreamReader):
    def __init__(self, writer: to_openai.StreamWriter | None = None):
        super().__init__()
        self.writer = writer

    def feed(self, event: Event) -> list[bytes]:
        state = self.state
        ev = wire.decode_anthropic_event(event.data)
        if ev.type == "error":
            state.error = f"error event in stream: {event.data[:300]!r}"
            return []
        if ev.type == "message_start" and ev.message is not None and ev.message.usage:
            state.tokens.add_anthropic(ev.message.usage)
        elif ev.type == "message_delta" and ev.usage is not None:
            state.tokens.add_anthropic(ev.usage)
        elif ev.type == "content_block_delta" and ev.delta is not None:
            state.started = True
            state.text_chars += len(ev.delta.text or "")
        elif ev.type == "message_stop":
            state.done = True
        if ev.type in ANTHROPIC_CONTENT_EVENTS:
            state.started = True
        return self.writer.feed(ev) if self.writer else [event.raw]


class TextCompletionChunks(StreamReader):
    def feed(self, event: Event) -> list[bytes]:
        self.state.started = True
        if event.data == b"[DONE]":
            self.state.done = True
            return [event.raw]
        chunk = wire.decode_text_completion(event.data)
        if chunk.error is not None:
            self.state.error = f"error event in stream: {event.data[:300]!r}"
            return []
        self.state.text_chars += sum(len(c.text) for c in chunk.choices)
        if chunk.usage is not None:
            self.state.tokens.add_openai(chunk.usage)
        return [event.raw]


class ResponsesEvents(StreamReader):
    """The Responses API's stream ends with response.completed (or
    .incomplete), which carries the usage; it has no [DONE]."""

    def feed(self, event: Event) -> list[bytes]:
        ev = wire.decode_responses_event(event.data)
        if ev.type in ("error", "response.failed"):
            self.state.error = f"error event in stream: {event.data[:300]!r}"
            return []
        if ev.type not in ("response.created", "response.in_progress"):
            self.state.started = True
        if ev.type == "response.output_text.delta" and isinstance(ev.delta, str):
            self.state.text_chars += len(ev.delta)
        if ev.type in ("response.completed", "response.incomplete"):
            self.state.done = True
            if ev.response is not None and ev.response.usage is not None:
                _responses_tokens(self.state.tokens, ev.response.usage)
        return [event.raw]


def _responses_tokens(tokens: Tokens, usage: wire.ResponsesUsage) -> None:
    tokens.prompt, tokens.completion = usage.input_tokens, usage.output_tokens
    if usage.input_tokens_details is not None:
        tokens.cache_read = usage.input_tokens_details.cached_tokens or 0


def _openai_answer(body: bytes) -> tuple[wire.OpenAICompletion, Tokens]:
    completion = wire.decode_openai_completion(body)
    tokens = Tokens()
    if completion.usage is not None:
        tokens.add_openai(completion.usage)
    return completion, tokens


def _anthropic_answer(body: bytes) -> tuple[wire.AnthropicMessage, Tokens]:
    message = wire.decode_anthropic_message(body)
    tokens = Tokens()
    if message.usage is not None:
        tokens.add_anthropic(message.usage)
    return message, tokens


class Exchange(abc.ABC):
    """Passes the caller's body through to a provider of the same format."""

    def body(self, raw: bytes, call: dict[str, Any], model: t.SnapshotModel) -> bytes:
        """The upstream body, from the caller's as sent (`raw`) and as read
        (`call`): here `raw` byte for byte but `model` and the parameters the
        model drops (the core's shaping). The front doors decoded `raw`
        already; should the core read it otherwise, the caller hears why."""
        try:
            return same_format_body(raw, model.version, model.drop_params)
        except ValueError as exc:
            raise Refused("", str(exc), "invalid_json") from None

    @abc.abstractmethod
    def answer(self, body: bytes, call: dict[str, Any], model_id: str) -> Answer:
        """Read a whole answer (raises if it cannot)."""

    def stream(self, call: dict[str, Any], model_id: str) -> StreamReader:
        raise Refused("stream", "this API does not stream")


def _as_sent(body: bytes, reading: _AnswerReading) -> Answer:
    """A same-format answer, passed back as sent, as the core read it."""
    prompt, completion, cache_read, cache_write, text, finish_reason = reading
    return Answer(body, text, Tokens(prompt, completion, cache_read, cache_write), finish_reason)


class OpenAIChat(Exchange):
    def answer(self, body: bytes, call: dict[str, Any], model_id: str) -> Answer:
        return _as_sent(body, read_openai_chat(body))

    def stream(self, call: dict[str, Any], model_id: str) -> StreamReader:
        return OpenAIChunks()


class OpenAIChatToAnthropic(Exchange):
    """An OpenAI client's chat request on an Anthropic model."""

    def body(self, raw: bytes, call: dict[str, Any], model: t.SnapshotModel) -> bytes:
        return _encode(
            to_anthropic.request(
                call, model.version, _max_tokens(model), frozenset(model.drop_params)
            )
        )

    def answer(self, body: bytes, call: dict[str, Any], model_id: str) -> Answer:
        message, tokens = _anthropic_answer(body)
        chat = to_openai.response(message, tokens, model_id, to_anthropic.json_tool(call))
        reply = chat["choices"][0]
        text = reply["message"]["content"] or ""
        return Answer(_encode(chat), text, tokens, reply["finish_reason"])

    def stream(self, call: dict[str, Any], model_id: str) -> StreamReader:
        include_usage = bool((call.get("stream_options") or {}).get("include_usage"))
        reader = AnthropicEvents()
        reader.writer = to_openai.StreamWriter(
            model_id, reader.state.tokens, include_usage, to_anthropic.json_tool(call)
        )
        return reader


class AnthropicMessages(Exchange):
    def answer(self, body: bytes, call: dict[str, Any], model_id: str) -> Answer:
        return _as_sent(body, read_anthropic_message(body))

    def stream(self, call: dict[str, Any], model_id: str) -> StreamReader:
        return AnthropicEvents()


class AnthropicMessagesToOpenAI(Exchange):
    """An Anthropic client's messages request on an OpenAI-style model."""

    def body(self, raw: bytes, call: dict[str, Any], model: t.SnapshotModel) -> bytes:
        return _encode(to_openai.request(call, model.version, frozenset(model.drop_params)))

    def answer(self, body: bytes, call: dict[str, Any], model_id: str) -> Answer:
        completion, tokens = _openai_answer(body)
        message = to_anthropic.response(completion, tokens, model_id)
        text = "".join(b["text"] for b in message["content"] if b["type"] == "text")
        return Answer(_encode(message), text, tokens, message["stop_reason"])

    def stream(self, call: dict[str, Any], model_id: str) -> StreamReader:
        reader = OpenAIChunks()
        reader.writer = to_anthropic.StreamWriter(model_id, reader.state.tokens)
        return reader


class Embeddings(Exchange):
    def answer(self, body: bytes, call: dict[str, Any], model_id: str) -> Answer:
        usage = wire.decode_embeddings(body).usage
        prompt = usage.prompt_tokens if usage else None
        return Answer(body, "", Tokens(prompt, 0 if usage else None))


class TextCompletions(Exchange):
    def answer(self, body: bytes, call: dict[str, Any], model_id: str) -> Answer:
        doc = wire.decode_text_completion(body)
        if not doc.choices:
            raise ValueError("a text completion without choices")
        tokens = Tokens()
        if doc.usage is not None:
            tokens.add_openai(doc.usage)
        return Answer(body, doc.choices[0].text, tokens, doc.choices[0].finish_reason)

    def stream(self, call: dict[str, Any], model_id: str) -> StreamReader:
        return TextCompletionChunks()


class Responses(Exchange):
    def answer(self, body: bytes, call: dict[str, Any], model_id: str) -> Answer:
        response = wire.decode_response(body)
        tokens = Tokens()
        if response.usage is not None:
            _responses_tokens(tokens, response.usage)
        return Answer(body, "", tokens, response.status)

    def stream(self, call: dict[str, Any], model_id: str) -> StreamReader:
        return ResponsesEvents()


EXCHANGES: dict[tuple[Operation, Format], Exchange] = {
    (Operation.CHAT, Format.OPENAI): OpenAIChat(),
    (Operation.CHAT, Format.ANTHROPIC): OpenAIChatToAnthropic(),
    (Operation.MESSAGES, Format.ANTHROPIC): AnthropicMessages(),
    (Operation.MESSAGES, Format.OPENAI): AnthropicMessagesToOpenAI(),
    (Operation.EMBEDDINGS, Format.OPENAI): Embeddings(),
    (Operation.COMPLETIONS, Format.OPENAI): TextCompletions(),
    (Operation.RESPONSES, Format.OPENAI): Responses(),
}


def exchange_for(operation: Operation, model: t.SnapshotModel, fmt: Format) -> Exchange:
    """The exchange, or Refused when the model cannot serve the operation."""
    if model.model_type not in operation.model_types:
        raise Refused(
            "model",
            f"model {model.id!r} is a {model.model_type} model: it does not serve "
            f"{operation.label} requests",
        )
    exchange = EXCHANGES.get((operation, fmt))
    if exchange is None:
        raise Refused(
            "model", f"model {model.id!r} ({model.provider}) has no {operation.label} API"
        )
    return exchange


def max_output_tokens(model: t.SnapshotModel, body: Mapping[str, Any]) -> int:
    """The most output tokens a request can get from this model: what it
    asks for (in any front door's words), else the model's own limit."""
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        asked = body.get(name)
        if isinstance(asked, int) and not isinstance(asked, bool) and asked > 0:
            return asked
    return _max_tokens(model)


def _max_tokens(model: t.SnapshotModel) -> int:
    """The model's configured output limit, for a request that names none."""
    configured = model.parameters.get("maxTokens")
    if isinstance(configured, int) and not isinstance(configured, bool) and configured > 0:
        return configured
    limits = [c.max_tokens for c in model.capabilities if c.max_tokens]
    return min(limits) if limits else DEFAULT_MAX_TOKENS
