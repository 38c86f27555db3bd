"""Everything that produces Anthropic's Messages format: an OpenAI chat
request made into a Messages request (an OpenAI client routed to an
Anthropic model), and an OpenAI answer or stream made into a Message or
Anthropic's event sequence (an Anthropic client routed to an OpenAI model).
"""

from __future__ import annotations

from typing import Any

import msgspec

from . import (
    Refused,
    Tokens,
    each,
    invalid,
    number,
    parse_data_url,
    present,
    refuse_unknown,
    string,
)
from . import text_of as _text_of
from .wire import OpenAIChunk, OpenAICompletion

PROVIDER = "Anthropic"
JSON_OBJECT_TOOL = "json_response"  # the forced tool that carries a json_object answer

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

# OpenAI parameters this translation carries over; any other is refused.
HANDLED = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "stream",
        "stream_options",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "user",
    }
)
# Values of otherwise unsupported parameters that ask for nothing beyond the default.
_DEFAULTS: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "logprobs": (False,),
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "logit_bias": ({},),
    "store": (False,),
    "modalities": (["text"],),
}

STOP_REASONS = {  # OpenAI finish_reason -> Anthropic stop_reason
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def json_tool(chat: dict[str, Any]) -> str | None:
    """The name of the forced tool that carries a `response_format` answer."""
    fmt = chat.get("response_format")
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_object":
        return JSON_OBJECT_TOOL
    if fmt.get("type") == "json_schema" and isinstance(fmt.get("json_schema"), dict):
        name = fmt["json_schema"].get("name")
        return name if isinstance(name, str) and name else JSON_OBJECT_TOOL
    return None


def request(
    chat: dict[str, Any], model: str, default_max_tokens: int, drop: frozenset[str]
) -> dict[str, Any]:
    """An OpenAI chat-completions request as an Anthropic Messages request."""
    params = {
        k: v for k, v in present(chat).items() if k in HANDLED or v not in _DEFAULTS.get(k, ())
    }
    refuse_unknown(params, HANDLED, PROVIDER, drop)
    system, messages = _messages(params.get("messages"))
    body: dict[str, Any] = {"model": model, "messages": messages}
    if system:
        body["system"] = "\n\n".join(system)
    limit = params.get("max_completion_tokens", params.get("max_tokens", default_max_tokens))
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise invalid("max_tokens", "'max_tokens' must be a positive integer")
    body["max_tokens"] = limit
    for name in ("temperature", "top_p"):
        if name in params:
            body[name] = number(params, name, 0, 1, PROVIDER)
    if "stop" in params:
        body["stop_sequences"] = _stop(params["stop"])
    if "user" in params:
        body["metadata"] = {"user_id": string(params["user"], "user")}
    if params.get("stream"):
        body["stream"] = True
    _tools(params, body)
    return body


def _stop(stop: Any) -> list[str]:
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return stop
    raise invalid("stop", "'stop' must be a string or a list of strings")


def _messages(messages: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """(system texts, Anthropic turns). Consecutive turns of one role are
    merged into one, as Anthropic requires: parallel tool results become one
    user turn."""
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "'{param}' must be a non-empty list")
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        try:
            role, blocks = _turn(m, system)
        except Refused as refused:
            raise refused.within(f"messages[{i}]") from None
        if role is None:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] = _as_blocks(turns[-1]["content"]) + _as_blocks(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return system, turns


def _turn(m: Any, system: list[str]) -> tuple[str | None, str | list[dict[str, Any]]]:
    """One OpenAI message as (Anthropic role, content); system and developer
    messages go to `system` (role None)."""
    if not isinstance(m, dict):
        raise invalid("", "each message must be an object")
    role, content = m.get("role"), m.get("content")
    if role == "user":
        return "user", _user_content(content)
    if role == "assistant":
        return "assistant", _assistant_content(m)
    if role == "tool":
        tool_use_id = m.get("tool_call_id")
        if not isinstance(tool_use_id, str):
            raise invalid("tool_call_id", "'{param}' must be a string")
        result = content if isinstance(content, str) else _text_of(content, "content")
        return "user", [{"type": "tool_result", "tool_use_id": tool_use_id, "content": result}]
    if role in ("system", "developer"):
        system.append(_text_of(content, "content"))
        return None, ""
    raise Refused("role", f"role {role!r} is not supported by {PROVIDER} models")


def _as_blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _user_content(content: Any) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid("content", "'{param}' must be a string or a list of parts")
    return each(content, _user_part, "content")


def _user_part(part: Any) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise invalid("text", "'{param}' must be a string")
        block: dict[str, Any] = {"type": "text", "text": text}
    elif kind == "image_url":
        block = {"type": "image", "source": _image_source(part.get("image_url"))}
    else:
        raise Refused("type", f"{kind!r} parts are not supported by {PROVIDER} models")
    cache_control = part.get("cache_control")
    if cache_control is not None:
        block["cache_control"] = cache_control
    return block


def _image_source(image: Any) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else None
    if not isinstance(url, str):
        raise invalid("image_url.url", "an image_url part needs '{param}'")
    if url.startswith(("http://", "https://")):
        return {"type": "url", "url": url}
    media_type, data = parse_data_url(url, "image_url.url")
    return {"type": "base64", "media_type": media_type, "data": data}


def _assistant_content(m: dict[str, Any]) -> str | list[dict[str, Any]]:
    content = m.get("content")
    text = "" if content is None else _text_of(content, "content")
    calls = m.get("tool_calls")
    if not calls:
        return text
    if not isinstance(calls, list):
        raise invalid("tool_calls", "'{param}' must be a list")
    blocks: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    return blocks + each(calls, _tool_use, "tool_calls")


def _tool_use(call: Any) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        raise invalid("function", "each tool call needs a '{param}' object")
    call_id, name = call.get("id"), function.get("name")
    if not isinstance(call_id, str):
        raise invalid("id", "'{param}' must be a string")
    if not isinstance(name, str):
        raise invalid("function.name", "'{param}' must be a string")
    arguments = function.get("arguments") or "{}"
    try:
        args = _decode(arguments) if isinstance(arguments, str) else None
    except msgspec.DecodeError:
        args = None
    if args is None:
        raise invalid("function.arguments", "'{param}' must be a JSON string")
    return {"type": "tool_use", "id": call_id, "name": name, "input": args}


def _tools(params: dict[str, Any], body: dict[str, Any]) -> None:
    """tools, tool_choice, parallel_tool_calls and response_format: the last
    becomes a forced tool whose input is the answer (Anthropic's documented
    way to get JSON that follows a schema)."""
    tools = []
    for i, tool in enumerate(params.get("tools") or ()):
        at = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise Refused(f"{at}.type", f"{kind!r} tools are not supported by {PROVIDER}")
        function = tool.get("function")
        if not isinstance(function, dict):
            raise invalid(f"{at}.function", f"'{at}.function' must be an object")
        spec: dict[str, Any] = {"name": string(function.get("name"), f"{at}.function.name")}
        if function.get("description") is not None:
            spec["description"] = string(function["description"], f"{at}.function.description")
        spec["input_schema"] = function.get("parameters") or {"type": "object", "properties": {}}
        tools.append(spec)
    choice = _tool_choice(params.get("tool_choice"))
    forced = json_tool(params)
    if forced is not None:
        tools.append(_json_tool(params["response_format"], forced))
        if not params.get("tools") or choice is None or choice["type"] == "none":
            choice = {"type": "tool", "name": forced}
        elif choice["type"] == "auto":
            choice = {"type": "any"}  # a tool call, or the JSON answer
    elif "response_format" in params and params["response_format"] != {"type": "text"}:
        raise Refused(
            "response_format.type", "response_format must be text, json_object or json_schema"
        )
    if params.get("parallel_tool_calls") is False and tools:
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if tools:
        body["tools"] = tools
    if choice is not None:
        body["tool_choice"] = choice


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice in ("auto", "none"):
        return {"type": choice}
    if choice == "required":
        return {"type": "any"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        return {"type": "tool", "name": string(name, "tool_choice.function.name")}
    raise invalid("tool_choice", "tool_choice must be auto, none, required or a named function")


def _json_tool(fmt: dict[str, Any], name: str) -> dict[str, Any]:
    described = fmt.get("json_schema") if fmt.get("type") == "json_schema" else None
    schema = (described or {}).get("schema") or {"type": "object"}
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        raise Refused(
            "response_format.json_schema.schema",
            f"{PROVIDER} returns JSON through a tool: the schema's root must be an object",
        )
    description = (described or {}).get("description") or "Answer with this JSON object."
    return {"name": name, "description": description, "input_schema": schema}


# --- answers -------------------------------------------------------------------


def response(completion: OpenAICompletion, tokens: Tokens, model_id: str) -> dict[str, Any]:
    """An OpenAI chat completion as an Anthropic Message."""
    choice = completion.choices[0]
    message = choice.message
    content: list[dict[str, Any]] = []
    text = message.content or message.refusal
    if text:
        content.append({"type": "text", "text": text})
    for call in message.tool_calls or ():
        function = call.function
        name = function.name if function else None
        content.append(
            {
                "type": "tool_use",
                "id": call.id or "",
                "name": name or "",
                "input": _decode((function.arguments if function else None) or "{}"),
            }
        )
    return {
        "id": f"msg_{completion.id}",
        "type": "message",
        "role": "assistant",
        "model": model_id,
        "content": content,
        "stop_reason": "refusal"
        if message.refusal and not message.content
        else STOP_REASONS.get(choice.finish_reason or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": tokens.anthropic_usage(),
    }


def event(kind: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + _encode({"type": kind, **payload}) + b"\n\n"


class StreamWriter:
    """OpenAI chunks in, Anthropic's event sequence out: message_start, a
    content block per text run or tool call (start, deltas, stop),
    message_delta with the stop reason and usage, message_stop."""

    def __init__(self, model_id: str, tokens: Tokens):
        self.model_id = model_id
        self.tokens = tokens
        self.started = False
        self.block = -1  # index of the open content block, -1: none
        self.block_kind: str | None = None  # "text", or "tool:<openai index>"
        self.stop_reason = "end_turn"

    def feed(self, chunk: OpenAIChunk) -> list[bytes]:
        out: list[bytes] = []
        if not self.started:
            self.started = True
            out.append(self._message_start(chunk.id))
        for choice in chunk.choices[:1]:  # n > 1 is refused on the way in
            delta = choice.delta
            if delta is not None:
                text = delta.content or delta.refusal
                if text:
                    self._open(out, "text", {"type": "text", "text": ""})
                    out.append(self._delta({"type": "text_delta", "text": text}))
                for call in delta.tool_calls or ():
                    function = call.function
                    kind = f"tool:{call.index or 0}"
                    if kind != self.block_kind:
                        block = {
                            "type": "tool_use",
                            "id": call.id or "",
                            "name": (function.name if function else None) or "",
                            "input": {},
                        }
                        self._open(out, kind, block)
                    if function is not None and function.arguments:
                        delta_json = {
                            "type": "input_json_delta",
                            "partial_json": function.arguments,
                        }
                        out.append(self._delta(delta_json))
            if choice.finish_reason:
                self.stop_reason = STOP_REASONS.get(choice.finish_reason, "end_turn")
        return out

    def finish(self) -> list[bytes]:
        """At the OpenAI stream's [DONE]: close the last block, then the message."""
        out: list[bytes] = []
        if not self.started:
            out.append(self._message_start(""))
        self._close(out)
        out.append(
            event(
                "message_delta",
                {
                    "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
                    "usage": self.tokens.anthropic_usage(),
                },
            )
        )
        out.append(event("message_stop", {}))
        return out

    def _message_start(self, upstream_id: str) -> bytes:
        message: dict[str, Any] = {
            "id": f"msg_{upstream_id}",
            "type": "message",
            "role": "assistant",
            "model": self.model_id,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return event("message_start", {"message": message})

    def _open(self, out: list[bytes], kind: str, block: dict[str, Any]) -> None:
        if kind == self.block_kind:
            return
        self._close(out)
        self.block += 1
        self.block_kind = kind
        out.append(event("content_block_start", {"index": self.block, "content_block": block}))

    def _close(self, out: list[bytes]) -> None:
        if self.block_kind is not None:
            out.append(event("content_block_stop", {"index": self.block}))
            self.block_kind = None

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return event("content_block_delta", {"index": self.block, "delta": delta})
