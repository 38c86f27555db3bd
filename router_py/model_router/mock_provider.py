"""A model provider on loopback that speaks OpenAI's, Azure OpenAI's or
Anthropic's wire format, plain and streaming, with configurable latency,
jitter and errors: `model-router mock-provider`.

It lets a new user try the router offline and gives tests and benchmarks a
real HTTP upstream. Its replies are deterministic (an echo of the last user
message) and its token counts are chars/4 of what it read and wrote.

Control, for tests: `POST /__mock/behavior` with any of `status` (answer with
this HTTP status), `retryAfter` (seconds, with 429/503), `malformed` (a 200
whose body is not JSON), `streamError` (an error event inside a 200 stream, as its event number
`streamErrorAt`, default 2),
`latencyMs`, `errorRate`, `healthStatus` (what `GET /health` answers, default
200); `GET /__mock/stats` counts the requests seen, and the health checks apart.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

Flavor = Literal["openai", "anthropic", "azure"]
_json = msgspec.json.Encoder()
_decode = msgspec.json.Decoder()


@dataclass
class Behavior:
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    error_rate: float = 0.0
    stream_chunks: int = 8
    status: int | None = None
    retry_after: float | None = None
    malformed: bool = False
    stream_error: bool = False
    stream_error_at: int = 2
    health_status: int = 200


@dataclass
class Stats:
    requests: int = 0
    health_checks: int = 0  # GET /health, not in `requests`
    by_path: dict[str, int] = field(default_factory=dict)


def tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def reply_for(messages: list[dict[str, Any]]) -> str:
    last = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    heard = _text_of(last.get("content")) if last else ""
    return f"Mock reply to: {heard[:200]}"


def split(text: str, parts: int) -> list[str]:
    size = max(1, -(-len(text) // max(1, parts)))
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


class MockProvider:
    """The ASGI app. One instance serves one flavor."""

    def __init__(self, flavor: Flavor, behavior: Behavior | None = None, seed: int | None = None):
        self.flavor = flavor
        self.behavior = behavior or Behavior()
        self.stats = Stats()
        self.rng = random.Random(seed)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                kind = (await receive())["type"]
                if kind == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif kind == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path, method = scope["path"], scope["method"]
        headers = dict(scope["headers"])
        if path.startswith("/__mock/"):
            await self._control(path, method, body, send)
            return
        if method == "GET" and path == "/health":
            await self._health(headers, send)
            return
        self.stats.requests += 1
        self.stats.by_path[path] = self.stats.by_path.get(path, 0) + 1
        if method == "GET" and path.endswith("/models"):
            data = [{"id": "mock-model", "object": "model", "created": 0, "owned_by": "mock"}]
            await _respond(send, 200, {"object": "list", "data": data})
            return
        problem = self._auth_problem(path, headers)
        if problem:
            await _respond(send, problem[0], problem[1])
            return
        try:
            request = _decode.decode(body)
            assert isinstance(request, dict)
        except (msgspec.DecodeError, AssertionError):
            await _respond(
                send, 400, self._error("invalid_request_error", "body is not a JSON object")
            )
            return
        if self.flavor == "anthropic" and not isinstance(request.get("max_tokens"), int):
            await _respond(
                send, 400, self._error("invalid_request_error", "max_tokens: Field required")
            )
            return
        b = self.behavior
        delay = b.latency_ms + (self.rng.uniform(-b.jitter_ms, b.jitter_ms) if b.jitter_ms else 0)
        streaming = bool(request.get("stream")) and b.status is None and not b.malformed
        if delay > 0 and not streaming:  # a stream spreads its latency over its events
            await asyncio.sleep(delay / 1000)
        if b.status is not None or (b.error_rate and self.rng.random() < b.error_rate):
            status = b.status or 500
            extra = (
                [(b"retry-after", str(b.retry_after).encode())] if b.retry_after is not None else []
            )
            await _respond(send, status, self._error("api_error", f"mock failure {status}"), extra)
            return
        if b.malformed:
            await _raw(send, 200, b'{"id": "broken", "choices": [', b"application/json")
            return
        if streaming:
            await self._stream(request, send, delay)
        else:
            await _respond(send, 200, self._completion(request))

    async def _health(self, headers: dict[bytes, bytes], send: Any) -> None:
        """A health URL for the router's active probes: it wants a key (any
        flavor's header) and answers `healthStatus`; its hits are counted apart."""
        self.stats.health_checks += 1
        if not any(headers.get(h) for h in (b"authorization", b"x-api-key", b"api-key")):
            await _respond(send, 401, self._error("authentication_error", "no API key"))
            return
        status = self.behavior.health_status
        await _respond(send, status, {"status": "ok" if status < 400 else "failing"})

    def _auth_problem(self, path: str, headers: dict[bytes, bytes]) -> tuple[int, Any] | None:
        if self.flavor == "anthropic":
            if not headers.get(b"x-api-key") and not headers.get(b"authorization"):
                return 401, self._error("authentication_error", "x-api-key header is required")
            if not headers.get(b"anthropic-version"):
                return 400, self._error(
                    "invalid_request_error", "anthropic-version header is required"
                )
        elif self.flavor == "azure":
            if not headers.get(b"api-key"):
                return 401, self._error("401", "Access denied due to missing api-key")
            if "/openai/deployments/" not in path:
                return 404, self._error("404", "Resource not found")
        return None

    def _error(self, kind: str, message: str) -> dict[str, Any]:
        if self.flavor == "anthropic":
            return {"type": "error", "error": {"type": kind, "message": message}}
        return {"error": {"message": message, "type": kind, "param": None, "code": None}}

    def _messages(self, request: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
        messages = request.get("messages") or []
        read = "".join(_text_of(m.get("content")) for m in messages if isinstance(m, dict))
        if self.flavor == "anthropic":
            read += _text_of(request.get("system"))
        return [m for m in messages if isinstance(m, dict)], read

    def _completion(self, request: dict[str, Any]) -> dict[str, Any]:
        messages, read = self._messages(request)
        text = reply_for(messages)
        model = request.get("model") or "mock-model"
        if self.flavor == "anthropic":
            return {
                "id": f"msg_{uuid.uuid4().hex[:24]}",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": tokens(read), "output_tokens": tokens(text)},
            }
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": tokens(read),
                "completion_tokens": tokens(text),
                "total_tokens": tokens(read) + tokens(text),
            },
        }

    async def _stream(self, request: dict[str, Any], send: Any, latency_ms: float) -> None:
        messages, read = self._messages(request)
        text = reply_for(messages)
        model = request.get("model") or "mock-model"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        events = (
            self._anthropic_events(model, text, read)
            if self.flavor == "anthropic"
            else self._openai_events(request, model, text, read)
        )
        pieces = split(text, self.behavior.stream_chunks)
        pause = (
            self.behavior.latency_ms / 1000 / max(1, len(pieces)) if self.behavior.latency_ms else 0
        )
        for i, event in enumerate(events):
            if self.behavior.stream_error and i == self.behavior.stream_error_at:
                error = self._error("api_error", "mock failure inside the stream")
                name = b"event: error\n" if self.flavor == "anthropic" else b""
                await send(
                    {
                        "type": "http.response.body",
                        "body": name + b"data: " + _json.encode(error) + b"\n\n",
                        "more_body": True,
                    }
                )
                break
            await send({"type": "http.response.body", "body": event, "more_body": True})
            if pause and i > 0:
                await asyncio.sleep(pause)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _openai_events(
        self, request: dict[str, Any], model: str, text: str, read: str
    ) -> list[bytes]:
        id, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
            body = {
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [
                    {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
                ],
            }
            return b"data: " + _json.encode(body) + b"\n\n"

        events = [chunk({"role": "assistant", "content": ""}, None)]
        events += [
            chunk({"content": piece}, None) for piece in split(text, self.behavior.stream_chunks)
        ]
        events.append(chunk({}, "stop"))
        if (request.get("stream_options") or {}).get("include_usage"):
            usage = {
                "prompt_tokens": tokens(read),
                "completion_tokens": tokens(text),
                "total_tokens": tokens(read) + tokens(text),
            }
            body = {
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage,
            }
            events.append(b"data: " + _json.encode(body) + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        return events

    def _anthropic_events(self, model: str, text: str, read: str) -> list[bytes]:
        def event(name: str, body: dict[str, Any]) -> bytes:
            return (
                f"event: {name}\ndata: ".encode() + _json.encode({"type": name, **body}) + b"\n\n"
            )

        message: dict[str, Any] = {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": tokens(read), "output_tokens": 1},
        }
        events = [
            event("message_start", {"message": message}),
            event(
                "content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}
            ),
            event("ping", {}),
        ]
        events += [
            event(
                "content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": piece}}
            )
            for piece in split(text, self.behavior.stream_chunks)
        ]
        events += [
            event("content_block_stop", {"index": 0}),
            event(
                "message_delta",
                {
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": tokens(text)},
                },
            ),
            event("message_stop", {}),
        ]
        return events

    async def _control(self, path: str, method: str, body: bytes, send: Any) -> None:
        if path == "/__mock/stats":
            await _respond(
                send,
                200,
                {
                    "requests": self.stats.requests,
                    "healthChecks": self.stats.health_checks,
                    "byPath": self.stats.by_path,
                },
            )
            return
        if path == "/__mock/behavior" and method == "POST":
            changes = _decode.decode(body or b"{}")
            b = self.behavior
            b.status = changes.get("status", b.status)
            b.retry_after = changes.get("retryAfter", b.retry_after)
            b.malformed = changes.get("malformed", b.malformed)
            b.stream_error = changes.get("streamError", b.stream_error)
            b.stream_error_at = changes.get("streamErrorAt", b.stream_error_at)
            b.latency_ms = changes.get("latencyMs", b.latency_ms)
            b.error_rate = changes.get("errorRate", b.error_rate)
            b.health_status = changes.get("healthStatus", b.health_status)
            if changes.get("reset"):
                self.behavior = Behavior(stream_chunks=b.stream_chunks)
                self.stats = Stats()
            await _respond(send, 200, {"ok": True})
            return
        await _respond(send, 404, {"error": {"message": "no such control"}})


async def _respond(
    send: Any, status: int, body: Any, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    await _raw(send, status, _json.encode(body), b"application/json", extra)


async def _raw(
    send: Any,
    status: int,
    body: bytes,
    content_type: bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app() -> MockProvider:
    """Granian's factory in each mock worker: the behavior comes from the environment."""
    import os

    env = os.environ
    behavior = Behavior(
        latency_ms=float(env.get("MOCK_LATENCY_MS", "0")),
        jitter_ms=float(env.get("MOCK_JITTER_MS", "0")),
        error_rate=float(env.get("MOCK_ERROR_RATE", "0")),
        stream_chunks=int(env.get("MOCK_STREAM_CHUNKS", "8")),
    )
    return MockProvider(env.get("MOCK_FLAVOR", "openai"), behavior)  # type: ignore[arg-type]
