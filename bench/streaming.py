"""A streaming client at concurrency 1 that timestamps every chunk it reads
from a `stamped_upstream.py` stream, directly or through the router.

Per request: time to first token (the first chunk's arrival after the request
was sent) and, per chunk, its delivery time (arrival minus the upstream's
stamp of its write). The same clock (CLOCK_MONOTONIC) on both sides.

The stamps are read from OpenAI chunks (`/v1/chat/completions`, passed through
as they came) or from Anthropic events (`/v1/messages` on the stamped OpenAI
model: the router translates every chunk).
"""

from __future__ import annotations

import http.client
import statistics
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import msgspec

NS_PER_MS = 1_000_000


class Chunk(msgspec.Struct):
    class Choice(msgspec.Struct):
        class Delta(msgspec.Struct):
            content: str | None = None

        delta: Delta

    choices: list[Choice]


class AnthropicEvent(msgspec.Struct):
    class Delta(msgspec.Struct):
        text: str | None = None

    type: str
    delta: Delta | None = None


_chunk = msgspec.json.Decoder(Chunk).decode
_event = msgspec.json.Decoder(AnthropicEvent).decode


def openai_texts(data: bytes) -> list[str | None]:
    return [choice.delta.content for choice in _chunk(data).choices]


def anthropic_texts(data: bytes) -> list[str | None]:
    event = _event(data)
    return [event.delta.text] if event.type == "content_block_delta" and event.delta else []


# A front door: its path, its request body, and how to read a stream's texts.
FRONT_DOORS: dict[str, tuple[str, dict[str, object], Callable[[bytes], list[str | None]]]] = {
    "openai": ("/v1/chat/completions", {}, openai_texts),
    "anthropic": ("/v1/messages", {"max_tokens": 100}, anthropic_texts),
}


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(
    url: str, headers: dict[str, str], requests: int, model: str, door: str = "openai"
) -> dict[str, float]:
    """Medians and p99 over `requests` streams, in ms, on one kept-alive
    connection; `door` says which request body to send and how to read it."""
    parts = urlsplit(url)
    _, extra, texts = FRONT_DOORS[door]
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    body = msgspec.json.encode(
        {
            "model": model,
            "stream": True,
            "messages": [{"role": "user", "content": "Stream"}],
            **extra,
        }
    )
    headers = {**headers, "Content-Type": "application/json"}
    first_token: list[float] = []
    delivery: list[float] = []
    later: list[float] = []  # the chunks after each stream's first
    for _ in range(requests):
        sent = time.monotonic_ns()
        conn.request("POST", parts.path, body, headers)
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"{url}: {response.status} {response.read()[:300]!r}")
        buffer, first = b"", None
        while data := response.read1(65536):
            now = time.monotonic_ns()
            buffer += data
            *events, buffer = buffer.split(b"\n\n")
            for event in events:
                for line in event.split(b"\n"):
                    if not line.startswith(b"data: {"):
                        continue
                    for stamp in texts(line[6:]):
                        if stamp and stamp.isdigit():
                            delivered = (now - int(stamp)) / NS_PER_MS
                            if first is not None:
                                later.append(delivered)
                            first = first or now
                            delivery.append(delivered)
        if first is None:
            raise RuntimeError(f"{url}: a stream without a stamped chunk")
        first_token.append((first - sent) / NS_PER_MS)
    conn.close()
    return {
        "ttft_p50": statistics.median(first_token),
        "chunk_p50": statistics.median(delivery),
        "chunk_p99": quantile(delivery, 0.99),
        "later_chunk_p99": quantile(later, 0.99) if later else 0.0,
        "chunks": float(len(delivery)),
    }
