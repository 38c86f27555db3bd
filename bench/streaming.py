"""A streaming client at concurrency 1 that timestamps every chunk it reads
from a `stamped_upstream.py` stream, directly or through the router.

Per request: time to first token (the first chunk's arrival after the request
was sent) and, per chunk, its delivery time (arrival minus the upstream's
stamp of its write). The same clock (CLOCK_MONOTONIC) on both sides.
"""

from __future__ import annotations

import http.client
import statistics
import time
from urllib.parse import urlsplit

import msgspec

NS_PER_MS = 1_000_000


class Chunk(msgspec.Struct):
    class Choice(msgspec.Struct):
        class Delta(msgspec.Struct):
            content: str | None = None

        delta: Delta

    choices: list[Choice]


_decode = msgspec.json.Decoder(Chunk).decode


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(url: str, headers: dict[str, str], requests: int, model: str) -> dict[str, float]:
    """Medians and p99 over `requests` streams, in ms, on one kept-alive connection."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    body = msgspec.json.encode(
        {"model": model, "stream": True, "messages": [{"role": "user", "content": "Stream"}]}
    )
    headers = {**headers, "Content-Type": "application/json"}
    first_token: list[float] = []
    delivery: list[float] = []
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
            for line in events:
                if not line.startswith(b"data: {"):
                    continue
                for choice in _decode(line[6:]).choices:
                    stamp = choice.delta.content
                    if stamp and stamp.isdigit():
                        first = first or now
                        delivery.append((now - int(stamp)) / NS_PER_MS)
        if first is None:
            raise RuntimeError(f"{url}: a stream without a stamped chunk")
        first_token.append((first - sent) / NS_PER_MS)
    conn.close()
    return {
        "ttft_p50": statistics.median(first_token),
        "chunk_p50": statistics.median(delivery),
        "chunk_p99": quantile(delivery, 0.99),
        "chunks": float(len(delivery)),
    }
