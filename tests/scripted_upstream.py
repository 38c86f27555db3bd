"""A scripted upstream provider: a real HTTP/1.1 server on loopback, in a
thread of the test process, that answers each path with whatever the test
queued for it (a JSON body, or an SSE stream) and records every request.

    scripted.queue("/v1/messages", Json(anthropic_message(text_block("hi"))))
    scripted.queue("/v1/messages", Sse(anthropic_stream(text_block("hi")), delay=0.05))
    scripted.queue("/v1/messages", lambda body: Json(...))  # made from the request
    ... call the router ...
    path, headers, body = scripted.received[0]

Nothing queued for a path: 500 with a message saying so, so a test never hangs.
The builders below write the providers' own wire formats (Anthropic Messages,
OpenAI chat completions), plain and streaming.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass
class Json:
    """A whole JSON answer."""

    body: Any
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Sse:
    """A server-sent event stream: (event name or None, data) pairs, data a
    JSON-able value or a raw string; an optional third item is a delay in
    seconds before that event, else `delay` applies between events."""

    events: list[tuple[Any, ...]]
    delay: float = 0.0
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


Response = Json | Sse
Script = Response | Callable[[Any], Response]  # or made from the request's body


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def _handle(self) -> None:
        raw = self._read_body()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        path = self.path.split("?")[0]
        headers = {k.lower(): v for k, v in self.headers.items()}
        response = self.server.scripted._record_and_pop(path, headers, body, raw)
        if callable(response):
            response = response(body)
        if response is None:
            message = f"scripted upstream: nothing queued for {self.command} {path}"
            response = Json({"error": {"message": message, "type": "scripted"}}, status=500)
        if isinstance(response, Sse):
            self._stream(response)
        else:
            self._json(response)

    do_GET = do_POST = _handle

    def _json(self, response: Json) -> None:
        payload = json.dumps(response.body).encode()
        self.send_response(response.status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _stream(self, response: Sse) -> None:
        self.close_connection = True
        self.send_response(response.status)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.flush()
        try:
            for i, (name, data, *rest) in enumerate(response.events):
                pause = rest[0] if rest else (response.delay if i else 0.0)
                if pause:
                    time.sleep(pause)
                text = data if isinstance(data, str) else json.dumps(data)
                event = (f"event: {name}\n" if name else "") + f"data: {text}\n\n"
                self.wfile.write(event.encode())
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the router left (a cancelled stream)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    scripted: ScriptedUpstream


class ScriptedUpstream:
    def __init__(self) -> None:
        self._queues: dict[str, deque[Script]] = defaultdict(deque)
        self._lock = threading.Lock()
        self.received: list[tuple[str, dict[str, str], Any]] = []
        self.raw_bodies: list[bytes] = []  # the bodies of `received`, as sent
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.scripted = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def queue(self, path: str, *responses: Script) -> None:
        """Answers for the next requests to `path`, in order; a callable
        answers from the request's JSON body."""
        with self._lock:
            self._queues[path].extend(responses)

    def bodies(self, path: str | None = None) -> list[Any]:
        """The JSON bodies received (at this path), in order."""
        return [body for p, _, body in self.received if path is None or p == path]

    def _record_and_pop(
        self, path: str, headers: dict[str, str], body: Any, raw: bytes
    ) -> Script | None:
        with self._lock:
            self.received.append((path, headers, body))
            self.raw_bodies.append(raw)
            queue = self._queues.get(path)
            return queue.popleft() if queue else None

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def scripted() -> Iterator[ScriptedUpstream]:
    upstream = ScriptedUpstream()
    yield upstream
    upstream.close()


# --- Anthropic's Messages API ------------------------------------------------


def text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def tool_use_block(id: str, name: str, input: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": id, "name": name, "input": input}


def anthropic_message(
    *blocks: dict[str, Any], stop_reason: str = "end_turn", **usage: int
) -> dict[str, Any]:
    return {
        "id": "msg_scripted",
        "type": "message",
        "role": "assistant",
        "model": "claude-upstream",
        "content": list(blocks),
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5, **usage},
    }


def _pieces(text: str, n: int = 3) -> list[str]:
    """`text` cut into n nearly equal non-empty pieces (fewer if it is short)."""
    size = max(1, -(-len(text) // n))
    return [text[i : i + size] for i in range(0, len(text), size)]


def anthropic_stream(
    *blocks: dict[str, Any], stop_reason: str = "end_turn", **usage: int
) -> list[tuple[Any, ...]]:
    """Anthropic's event sequence for a message of these blocks (text, thinking,
    tool_use); text, thinking and tool input arrive in several deltas."""
    message = anthropic_message(stop_reason=stop_reason, **usage)
    usage_in = {k: v for k, v in message["usage"].items() if k != "output_tokens"}
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "usage": {**usage_in, "output_tokens": 1},
    }
    events: list[tuple[Any, ...]] = [
        ("message_start", {"type": "message_start", "message": start}),
        ("ping", {"type": "ping"}),
    ]
    for i, block in enumerate(blocks):
        if block["type"] == "text":
            first = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": piece} for piece in _pieces(block["text"])]
        elif block["type"] == "thinking":
            first = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [
                {"type": "thinking_delta", "thinking": piece}
                for piece in _pieces(block["thinking"])
            ]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        else:
            first = {**block, "input": {}}
            deltas = [
                {"type": "input_json_delta", "partial_json": piece}
                for piece in _pieces(json.dumps(block["input"]))
            ]
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": i, "content_block": first},
            )
        )
        events += [
            ("content_block_delta", {"type": "content_block_delta", "index": i, "delta": d})
            for d in deltas
        ]
        events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": message["usage"]["output_tokens"]},
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events


# --- OpenAI's chat completions ----------------------------------------------


def tool_call(id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


def openai_usage(prompt: int = 10, completion: int = 5, cached: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def openai_completion(
    content: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    finish_reason: str = "stop",
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-upstream",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": usage or openai_usage(),
    }


def openai_stream(
    content: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    finish_reason: str = "stop",
    usage: dict[str, Any] | None = None,
) -> list[tuple[Any, ...]]:
    """OpenAI's chunks for that answer (content and arguments in pieces), a
    usage chunk, then [DONE]."""

    def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> tuple:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        body = {
            "id": "chatcmpl-scripted",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": "gpt-upstream",
            "choices": choices,
            **extra,
        }
        return (None, body)

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": piece}) for piece in _pieces(content or "")]
    for k, call in enumerate(tool_calls or []):
        head = {"index": k, "id": call["id"], "type": "function"}
        head["function"] = {"name": call["function"]["name"], "arguments": ""}
        events.append(chunk({"tool_calls": [head]}))
        events += [
            chunk({"tool_calls": [{"index": k, "function": {"arguments": piece}}]})
            for piece in _pieces(call["function"]["arguments"])
        ]
    events.append(chunk({}, finish_reason))
    events.append(chunk(None, usage=usage or openai_usage()))
    events.append((None, "[DONE]"))
    return events
