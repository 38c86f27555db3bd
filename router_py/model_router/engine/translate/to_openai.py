"""Everything that produces OpenAI's chat-completions format: an Anthropic
Messages request made into a chat request (an Anthropic client routed to an
OpenAI-style model), and an Anthropic message or event stream made into a
chat completion or chunks (an OpenAI client routed to an Anthropic model).
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from . import Refused, Tokens, data_url, invalid, number, present, refuse_unknown, string
from . import text_of as _text_of
from .wire import AnthropicBlock, AnthropicEvent, AnthropicMessage

PROVIDER = "OpenAI-style"
MAX_STOP = 4  # OpenAI's limit on stop sequences

_encode = msgspec.json.Encoder().encode

HANDLED = frozenset(
    {
        "model",
        "messages",
        "system",
        "max_tokens",
        "temperature",
        "top_p",
        "stop_sequences",
        "stream",
        "tools",
        "tool_choice",
        "metadata",
    }
)

FINISH_REASONS = {  # Anthropic stop_reason -> OpenAI finish_reason
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def request(body: dict[str, Any], model: str, drop: frozenset[str]) -> dict[str, Any]:
    """An Anthropic Messages request as an OpenAI chat-completions request."""
    params = present(body)
    refuse_unknown(params, HANDLED, PROVIDER, drop)
    messages: list[dict[str, Any]] = []
    if "system" in params:
        messages.append({"role": "system", "content": _text_of(params["system"], "system")})
    turns = params.get("messages")
    if not isinstance(turns, list) or not turns:
        raise invalid("messages", "'messages' must be a non-empty list")
    for i, turn in enumerate(turns):
        try:
            messages += _turn(turn)
        except Refused as refused:
            raise refused.within(f"messages[{i}]") from None
    chat: dict[str, Any] = {"model": model, "messages": messages}
    if "max_tokens" in params:
        chat["max_tokens"] = params["max_tokens"]
    for name in ("temperature", "top_p"):
        if name in params:
            chat[name] = number(params, name, 0, 1, "Anthropic")
    if "stop_sequences" in params:
        stop = params["stop_sequences"]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise invalid("stop_sequences", "'stop_sequences' must be a list of strings")
        if len(stop) > MAX_STOP:
            raise Refused("stop_sequences", f"{PROVIDER} models take at most {MAX_STOP}")
        chat["stop"] = stop
    metadata = params.get("metadata")
    if isinstance(metadata, dict) and metadata.get("user_id") is not None:
        chat["user"] = string(metadata["user_id"], "metadata.user_id")
    if params.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}  # usage arrives only if asked
    _tools(params, chat)
    return chat


def _turn(turn: Any) -> list[dict[str, Any]]:
    """One Anthropic turn as OpenAI messages: a user turn's tool results
    become `tool` messages (first, as they answer the previous turn)."""
    role = turn.get("role") if isinstance(turn, dict) else None
    if role not in ("user", "assistant"):
        raise invalid("role", "each message's role must be user or assistant")
    content = turn["content"] if "content" in turn else None
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise invalid("content", "'{param}' must be a string or a list of blocks")
    if role == "assistant":
        return [_assistant(content)]
    results, parts = [], []
    for j, block in enumerate(content):
        try:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "tool_result":
                results.append(_tool_message(block))
            else:
                parts.append(_part(block, kind))
        except Refused as refused:
            raise refused.within(f"content[{j}]") from None
    return results + ([{"role": "user", "content": parts}] if parts else [])


def _tool_message(block: dict[str, Any]) -> dict[str, Any]:
    tool_call_id = block.get("tool_use_id")
    if not isinstance(tool_call_id, str):
        raise invalid("tool_use_id", "'{param}' must be a string")
    content = block.get("content", "")
    if not isinstance(content, str):
        content = _text_of(content, "content")
    return {"role": "tool", "tool_call_id": tool_call_id, "content": content}


def _part(block: Any, kind: str | None) -> dict[str, Any]:
    if kind == "text":
        return {"type": "text", "text": string(block.get("text"), "text")}
    if kind == "image":
        return {"type": "image_url", "image_url": {"url": _source_url(block)}}
    if kind == "document":
        source = block.get("source") or {}
        if source.get("type") == "base64" and source.get("media_type") == "application/pdf":
            filename = block.get("title") or "document.pdf"
            file = {"filename": filename, "file_data": data_url("application/pdf", source["data"])}
            return {"type": "file", "file": file}
        raise Refused("source", f"{PROVIDER} models take documents as base64 PDF only")
    raise Refused("type", f"{kind!r} blocks are not supported by {PROVIDER} models")


def _source_url(block: dict[str, Any]) -> str:
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "url":
        return string(source.get("url"), "source.url")
    if isinstance(source, dict) and source.get("type") == "base64":
        media_type = string(source.get("media_type"), "source.media_type")
        return data_url(media_type, string(source.get("data"), "source.data"))
    raise Refused("source.type", f"{PROVIDER} models take images by URL or base64 only")


def _assistant(blocks: list[Any]) -> dict[str, Any]:
    """Text blocks become the content, tool_use blocks the tool calls.
    Thinking blocks are the model's own earlier reasoning, which an
    OpenAI-style model cannot take back: they are left out."""
    texts, calls = [], []
    for j, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        try:
            if kind == "text":
                texts.append(string(block.get("text"), "text"))
            elif kind == "tool_use":
                calls.append(_tool_call_of(block))
            elif kind not in ("thinking", "redacted_thinking"):
                raise Refused("type", f"{kind!r} blocks are not supported by {PROVIDER} models")
        except Refused as refused:
            raise refused.within(f"content[{j}]") from None
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _tool_call_of(block: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": string(block.get("id"), "id"),
        "type": "function",
        "function": {
            "name": string(block.get("name"), "name"),
            "arguments": _encode(block.get("input") or {}).decode(),
        },
    }


def _tools(params: dict[str, Any], chat: dict[str, Any]) -> None:
    tools = []
    for i, tool in enumerate(params.get("tools") or ()):
        at = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type", "custom") != "custom":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise Refused(f"{at}.type", f"{kind!r} tools are not supported by {PROVIDER} models")
        function: dict[str, Any] = {"name": string(tool.get("name"), f"{at}.name")}
        if tool.get("description") is not None:
            function["description"] = string(tool["description"], f"{at}.description")
        function["parameters"] = tool.get("input_schema") or {"type": "object", "properties": {}}
        tools.append({"type": "function", "function": function})
    if tools:
        chat["tools"] = tools
    choice = params.get("tool_choice")
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind in ("auto", "none"):
        chat["tool_choice"] = kind
    elif kind == "any":
        chat["tool_choice"] = "required"
    elif kind == "tool":
        name = string(choice.get("name"), "tool_choice.name")
        chat["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        raise invalid("tool_choice.type", "tool_choice.type must be auto, any, tool or none")
    if choice.get("disable_parallel_tool_use") and tools:
        chat["parallel_tool_calls"] = False


# --- answers -------------------------------------------------------------------


def response(
    message: AnthropicMessage, tokens: Tokens, model_id: str, json_tool: str | None
) -> dict[str, Any]:
    """An Anthropic Message as an OpenAI chat completion. The forced tool of
    a `response_format` request comes back as the message's content."""
    texts, reasoning, calls = [], [], []
    finish = FINISH_REASONS.get(message.stop_reason or "end_turn", "stop")
    for block in message.content:
        if block.type == "text" and block.text:
            texts.append(block.text)
        elif block.type == "thinking" and block.thinking:
            reasoning.append(block.thinking)
        elif block.type == "tool_use" and block.name == json_tool:
            texts.append(_encode(block.input).decode())
            finish = "stop"
        elif block.type == "tool_use":
            calls.append(_tool_call(block))
    out: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if reasoning:
        out["reasoning_content"] = "".join(reasoning)
    if calls:
        out["tool_calls"] = calls
    if out["content"] is None and not calls:
        out["content"] = ""
    return {
        "id": f"chatcmpl-{message.id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_id,
        "choices": [{"index": 0, "message": out, "finish_reason": finish, "logprobs": None}],
        "usage": tokens.openai_usage(),
    }


def _tool_call(block: AnthropicBlock) -> dict[str, Any]:
    arguments = _encode(block.input if block.input is not None else {}).decode()
    return {
        "id": block.id or "",
        "type": "function",
        "function": {"name": block.name or "", "arguments": arguments},
    }


DONE = b"data: [DONE]\n\n"


class StreamWriter:
    """Anthropic events in, OpenAI chunks out. Tool calls are numbered in
    the order their blocks start; the JSON of a `response_format` tool
    streams as content."""

    def __init__(self, model_id: str, tokens: Tokens, include_usage: bool, json_tool: str | None):
        self.model_id = model_id
        self.tokens = tokens
        self.include_usage = include_usage
        self.json_tool = json_tool
        self.id = "chatcmpl-"
        self.created = int(time.time())
        self.tool_index: dict[int, int] = {}  # content block index -> tool call index
        self.json_blocks: set[int] = set()
        self.answered_json = False

    def feed(self, ev: AnthropicEvent) -> list[bytes]:
        kind = ev.type
        if kind == "message_start" and ev.message is not None:
            self.id = f"chatcmpl-{ev.message.id}"
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start" and ev.content_block is not None:
            block, index = ev.content_block, ev.index or 0
            if block.type != "tool_use":
                return []
            if block.name == self.json_tool:
                self.json_blocks.add(index)
                self.answered_json = True
                return []
            k = self.tool_index[index] = len(self.tool_index)
            call = {"index": k, **_tool_call(block)}
            call["function"]["arguments"] = ""
            return [self._chunk({"tool_calls": [call]})]
        if kind == "content_block_delta" and ev.delta is not None:
            return self._delta(ev.index or 0, ev.delta)
        if kind == "message_delta":
            stop = ev.delta.stop_reason if ev.delta else None
            finish = FINISH_REASONS.get(stop or "end_turn", "stop")
            if self.answered_json and finish == "tool_calls" and not self.tool_index:
                finish = "stop"
            return [self._chunk({}, finish)]
        if kind == "message_stop":
            usage = [self._usage_chunk()] if self.include_usage else []
            return [*usage, DONE]
        return []  # ping, content_block_stop

    def _delta(self, index: int, delta: Any) -> list[bytes]:
        if delta.type == "text_delta" and delta.text:
            return [self._chunk({"content": delta.text})]
        if delta.type == "thinking_delta" and delta.thinking:
            return [self._chunk({"reasoning_content": delta.thinking})]
        if delta.type == "input_json_delta" and delta.partial_json:
            if index in self.json_blocks:
                return [self._chunk({"content": delta.partial_json})]
            if index in self.tool_index:
                call = {
                    "index": self.tool_index[index],
                    "function": {"arguments": delta.partial_json},
                }
                return [self._chunk({"tool_calls": [call]})]
        return []

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return self._encode_chunk([choice])

    def _usage_chunk(self) -> bytes:
        return self._encode_chunk([], self.tokens.openai_usage())

    def _encode_chunk(self, choices: list[Any], usage: dict[str, Any] | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model_id,
            "choices": choices,
        }
        if usage is not None:
            chunk["usage"] = usage
        return b"data: " + _encode(chunk) + b"\n\n"
