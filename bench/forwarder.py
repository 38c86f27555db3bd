"""The floor of the router's design: a bare Granian RSGI app that forwards each
body to one upstream with the router's own upstream client
(`engine/upstream.py`: plain calls in the Rust core, streams on the event
loop) and does nothing else: no auth, routing, accounting, logs or metrics.
A body asking for a stream is answered chunk by chunk as the upstream sends.

`bench/load.py` measures it beside nginx and the router, so each run shows
how much of the router's cost is the design (Granian handing each request to
Python, the upstream exchange's hand-overs) and how much its own work.

    UPSTREAM_URL=http://127.0.0.1:PORT/v1/chat/completions \\
        granian --interface rsgi --workers 2 --loop uvloop forwarder:app
"""

from __future__ import annotations

import os
from typing import Any

from model_router.engine.upstream import Deadlines, UpstreamClient, UpstreamRequest

UPSTREAM = os.environ.get("UPSTREAM_URL", "")
HEALTH = "/__floor/health"  # answered here: the app is loaded (bench/stack.py waits for it)
HEADERS = {"content-type": "application/json", "authorization": "Bearer mock-secret"}
client: UpstreamClient | None = None


async def app(scope: Any, proto: Any) -> None:
    global client
    if scope.proto != "http":
        return
    if scope.path == HEALTH:
        proto.response_empty(200, [])
        return
    if client is None:  # a forked worker's own, on its own loop
        client = UpstreamClient()
    body = await proto()
    request, deadlines = UpstreamRequest(UPSTREAM, HEADERS, body), Deadlines.within(30.0)
    if b'"stream":true' not in body:
        answer = await client.send(request, deadlines)
        proto.response_bytes(answer.status, [("content-type", "application/json")], answer.body)
        return
    async with client.stream(request, deadlines) as stream:
        head = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
        transport = proto.response_stream(stream.status, head)
        if stream.status != 200:
            await transport.send_bytes(stream.body)
        async for chunk in stream.chunks:
            await transport.send_bytes(chunk)
