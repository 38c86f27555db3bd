"""An OpenAI-format streaming upstream whose every chunk carries the moment it
was written: its delta's content is `time.monotonic_ns()` at the write.

    python bench/stamped_upstream.py --port P [--events 8] [--gap-ms 2]

CLOCK_MONOTONIC is one clock for every process on the machine, so a client
that reads the stamp knows each chunk's own delivery time, directly from this
upstream and through the router, without guessing where the upstream paused.
Keep-alive HTTP/1.1, any POST answered with a chunked text/event-stream.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import msgspec

HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
)


def event(content: str | None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    body = {
        "id": "chatcmpl-stamped",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "stamped",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + msgspec.json.encode(body) + b"\n\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, args) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            writer.write(HEAD)
            for i in range(args.events):
                if i:
                    await asyncio.sleep(args.gap_ms / 1000)
                writer.write(chunk(event(str(time.monotonic_ns()))))
            writer.write(chunk(event(None, "stop") + b"data: [DONE]\n\n") + b"0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def main(args: argparse.Namespace) -> None:
    server = await asyncio.start_server(
        lambda r, w: serve(r, w, args), "127.0.0.1", args.port, reuse_address=True
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--events", type=int, default=8)
    parser.add_argument("--gap-ms", type=float, default=2.0)
    asyncio.run(main(parser.parse_args()))
