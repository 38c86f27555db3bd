"""The upstream HTTP client against real sockets on loopback: a tiny HTTP/1.1
server whose answers each test scripts, counting the connections it accepts."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import os
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import scripted_upstream
from scripted_upstream import Json

from model_router.engine.upstream import (
    Deadlines,
    UpstreamClient,
    UpstreamError,
    UpstreamRequest,
    UpstreamTimeout,
)

scripted = scripted_upstream.scripted  # the fixture

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]
OK = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{"ok":true}'


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    return head + await reader.readexactly(length)


class Server:
    def __init__(self, answer: Answer):
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                self.requests.append(await read_request(reader))
                if not await self.answer(reader, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1/chat/completions?api-version=1"

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Takes the request and says nothing for 5 s."""
    await asyncio.sleep(5)
    return False


async def slow_then_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    await asyncio.sleep(0.2)
    writer.write(OK)
    return True


def request(url: str) -> UpstreamRequest:
    return UpstreamRequest(url, {"content-type": "application/json", "x-api-key": "k"}, b'{"a":1}')


def run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_keeps_connections_alive_and_sends_a_proper_request():
    async def answer(reader, writer):
        writer.write(OK)
        return True

    async def scenario():
        server, client = Server(answer), UpstreamClient()
        async with server as url:
            for _ in range(5):
                response = await client.send(request(url), Deadlines.within(5))
                assert (response.status, response.body) == (200, b'{"ok":true}')
                assert response.headers["content-type"] == "application/json"
            await asyncio.gather(
                *(client.send(request(url), Deadlines.within(5)) for _ in range(4))
            )
        await client.close()
        assert server.connections <= 4
        first = server.requests[0]
        assert first.startswith(b"POST /v1/chat/completions?api-version=1 HTTP/1.1\r\n")
        assert b"\r\nx-api-key: k\r\n" in first and first.endswith(b'{"a":1}')
        assert b"host: 127.0.0.1:" in first

    run(scenario())


def test_chunked_and_connection_delimited_bodies():
    chunked = (
        b'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\n{"a"\r\n4\r\n:12}\r\n0\r\n\r\n'
    )

    async def answer_chunked(reader, writer):
        writer.write(chunked)
        return True

    async def answer_until_close(reader, writer):
        writer.write(b'HTTP/1.0 200 OK\r\n\r\n{"until":"close"}')
        await writer.drain()
        return False

    async def scenario():
        client = UpstreamClient()
        async with Server(answer_chunked) as url:
            assert (await client.send(request(url), Deadlines.within(5))).body == b'{"a":12}'
        async with Server(answer_until_close) as url:
            assert (
                await client.send(request(url), Deadlines.within(5))
            ).body == b'{"until":"close"}'
            assert (
                await client.send(request(url), Deadlines.within(5))
            ).body == b'{"until":"close"}'
        await client.close()

    run(scenario())


def test_streams_chunk_by_chunk():
    async def answer(reader, writer):
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        for i in range(3):
            event = f"data: {i}\n\n".encode()
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")
        return True

    async def scenario():
        client = UpstreamClient()
        async with Server(answer) as url:
            async with client.stream(request(url), Deadlines.within(5)) as stream:
                assert stream.status == 200
                got = [chunk async for chunk in stream.chunks]
        assert b"".join(got) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n" and len(got) == 3
        await client.close()

    run(scenario())


def test_a_stream_called_again_at_once_does_not_reuse_a_connection_its_upstream_closed():
    """The event loop's client (streams, https) as the core: a pooled
    connection is looked at before it is reused, so an upstream that closed
    it right after answering (its FIN not yet read by the loop) costs a new
    connection, not a failed call."""

    async def answer_once(reader, writer):
        event = b"data: 1\n\n"
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(event), event))
        await writer.drain()
        return False  # close after each response, though HTTP/1.1 said keep-alive

    async def scenario():
        server, client = Server(answer_once), UpstreamClient()
        async with server as url:
            for _ in range(50):
                async with client.stream(request(url), Deadlines.within(5)) as stream:
                    assert [chunk async for chunk in stream.chunks] == [b"data: 1\n\n"]
        assert server.connections == 50
        await client.close()

    run(scenario())


def test_a_paced_stream_fails_on_a_stall_not_on_a_long_steady_stream():
    """`pace`: chunks 0.1 s apart for 0.6 s pass an idle limit of 0.25 s (the
    one timer moves on with the data); 0.6 s of silence fails after that
    limit, before the silence ends; the overall limit ends a steady stream."""

    def answer(gaps: list[float]) -> Answer:
        async def send(reader, writer):
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n"
            )
            for gap in gaps:
                await asyncio.sleep(gap)
                writer.write(b"9\r\ndata: x\n\n\r\n")
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            return True

        return send

    async def read(gaps: list[float], idle_s: float, within_s: float) -> tuple[int, float]:
        client, got = UpstreamClient(), 0
        loop = asyncio.get_running_loop()
        async with Server(answer(gaps)) as url:
            async with client.stream(request(url), Deadlines.within(5)) as stream:
                stream.pace(idle_s, within_s)
                started = loop.time()
                try:
                    async for _ in stream.chunks:
                        got += 1
                except UpstreamTimeout as exc:
                    assert "stalled" in str(exc)
                    return got, loop.time() - started
        await client.close()
        return got, -1.0

    async def scenario():
        assert await read([0.1] * 6, 0.25, 5) == (6, -1.0)
        got, after = await read([0.1, 0.1, 0.6, 0.1], 0.25, 5)
        assert got == 2 and 0.4 <= after < 0.8, after  # before the silence ends
        got, after = await read([0.1] * 10, 0.25, 0.45)
        assert 2 <= got < 10 and 0.44 <= after < 0.9, (got, after)

    run(scenario())


def test_failures_are_errors_not_hangs():
    async def garbage(reader, writer):
        writer.write(b"this is not http\r\n\r\n")
        return True

    async def hang_up(reader, writer):
        writer.write(b'HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{"trunc')
        await writer.drain()
        return False

    async def scenario():
        client = UpstreamClient()
        for answer in (garbage, hang_up):
            async with Server(answer) as url:
                with pytest.raises(UpstreamError):
                    await client.send(request(url), Deadlines.within(5))
        async with Server(silent) as url:
            with pytest.raises(TimeoutError):
                await client.send(request(url), Deadlines.within(0.2))
        with pytest.raises(UpstreamError):
            await client.send(request("http://127.0.0.1:9/nothing-listens"), Deadlines.within(5))
        await client.close()

    run(scenario())


@pytest.mark.parametrize("pause_s", [0.05, 0.0])
def test_a_connection_the_server_closed_is_not_reused(pause_s):
    """Idle a while, or called again at once: the core looks at a pooled
    connection before reusing it, so a FIN that came with the answer is seen."""

    async def answer_once(reader, writer):
        writer.write(OK)
        await writer.drain()
        return False  # close after each response, though HTTP/1.1 said keep-alive

    async def scenario():
        server, client = Server(answer_once), UpstreamClient()
        calls = 50 if pause_s == 0 else 3
        async with server as url:
            for _ in range(calls):
                assert (await client.send(request(url), Deadlines.within(5))).status == 200
                await asyncio.sleep(pause_s)
        assert server.connections == calls
        await client.close()

    run(scenario())


def test_https_verifies_the_server_certificate(tmp_path, monkeypatch):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )

    async def answer(reader, writer):
        writer.write(OK)
        return True

    async def scenario(trusted: bool):
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)
        server = Server(answer)
        server.server = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=tls)
        port = server.server.sockets[0].getsockname()[1]
        client = UpstreamClient()
        url = f"https://localhost:{port}/v1/messages"
        try:
            if trusted:
                assert (await client.send(request(url), Deadlines.within(5))).body == b'{"ok":true}'
                assert (await client.send(request(url), Deadlines.within(5))).status == 200
                assert server.connections == 1
            else:
                with pytest.raises(UpstreamError, match="invalid peer certificate: UnknownIssuer"):
                    await client.send(request(url), Deadlines.within(5))
        finally:
            server.server.close()
            await client.close()

    run(scenario(trusted=False))
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    run(scenario(trusted=True))


def test_a_hung_origin_holds_only_its_own_pool_and_waits_are_bounded():
    async def ok(reader, writer):
        writer.write(OK)
        return True

    async def scenario():
        client = UpstreamClient(pool_size=1)
        async with Server(silent) as hung, Server(ok) as healthy:
            loop = asyncio.get_running_loop()
            stuck = asyncio.ensure_future(client.send(request(hung), Deadlines.within(2)))
            await asyncio.sleep(0.05)
            # Its one connection is taken: the next call to it waits no longer
            # than its own deadline, and says why.
            started = loop.time()
            with pytest.raises(TimeoutError, match="no free connection"):
                await client.send(request(hung), Deadlines.within(0.2))
            assert loop.time() - started < 0.5
            # Another origin is served at once.
            started = loop.time()
            assert (await client.send(request(healthy), Deadlines.within(1))).status == 200
            assert loop.time() - started < 0.1
            with pytest.raises(TimeoutError, match="no head"):
                await stuck
        await client.close()

    run(scenario())


def test_the_head_deadline_is_shorter_than_the_whole_answers():
    async def slow_body(reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{")
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.write(b'"ok":true}')
        return True

    async def scenario():
        client = UpstreamClient()
        async with Server(slow_body) as url:
            # The head comes at once (within 0.1 s), the body in 0.3 s (within 1 s).
            response = await client.send(request(url), Deadlines.within(1, head_s=0.1))
            assert response.body == b'{"ok":true}'
            with pytest.raises(TimeoutError, match="no answer"):
                await client.send(request(url), Deadlines.within(0.15, head_s=0.1))
        await client.close()

    run(scenario())


def test_an_answer_over_the_cap_is_refused_not_buffered():
    big = b"x" * 100_000

    async def huge(reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(big) + big)
        return True

    async def scenario():
        client = UpstreamClient(max_body=10_000)
        async with Server(huge) as url:
            with pytest.raises(UpstreamError, match="over 10000 bytes"):
                await client.send(request(url), Deadlines.within(5))
        await client.close()

    run(scenario())


def core_threads() -> set[str]:
    """Threads of this process named as the core's upstream thread."""
    tasks = Path("/proc/self/task").iterdir()
    return {task.name for task in tasks if (task / "comm").read_text().strip() == "upstream"}


def test_plain_calls_run_on_the_cores_thread_and_a_caller_may_give_up():
    async def scenario():
        client = UpstreamClient()
        gc.collect()  # earlier tests' clients, kept by their exceptions' tracebacks
        await asyncio.sleep(0.1)  # their threads end
        before = core_threads()
        async with Server(slow_then_ok) as url:
            # A caller that stops waiting (its own deadline, a client gone)
            # leaves nothing behind: its exchange ends with it.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client.send(request(url), Deadlines.within(5)), 0.05)
            (ours,) = core_threads() - before  # other tests' threads may end meanwhile
            await asyncio.sleep(0.3)
            assert (await client.send(request(url), Deadlines.within(5))).body == b'{"ok":true}'
            # Closing fails what is still waited for, at once.
            waiting = asyncio.ensure_future(client.send(request(url), Deadlines.within(5)))
            await asyncio.sleep(0.05)
            await client.close()
            with pytest.raises(UpstreamError, match="closed"):
                await waiting
        del client, waiting  # its exception's traceback holds the call's frame
        gc.collect()
        await asyncio.sleep(0.3)  # the answer in flight still lands, then the thread ends
        assert ours not in core_threads()

    run(scenario())


def test_a_call_given_up_closes_its_connection_at_once():
    """A caller that stops waiting (its own timeout, a client gone) ends the
    exchange: the upstream sees the connection close, so it can stop working
    on an answer nobody reads, and the origin's pool bounds what stays open."""
    opened = closed = 0

    async def silent_until_closed(reader, writer):
        nonlocal opened, closed
        opened += 1
        await reader.read()  # the end of the connection
        closed += 1
        return False

    async def scenario():
        client = UpstreamClient(pool_size=4)
        async with Server(silent_until_closed) as url:

            async def give_up() -> None:
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(client.send(request(url), Deadlines.within(30)), 0.05)

            for _ in range(5):
                await asyncio.gather(*(give_up() for _ in range(4)))
            for _ in range(100):
                if closed == opened:
                    break
                await asyncio.sleep(0.01)
            assert (opened, closed) == (20, 20)
            assert client._offloaded is not None and not client._offloaded._waiting
        await client.close()

    run(scenario())


def half_closed(port: int) -> int:
    """This machine's connections to 127.0.0.1:port the server closed and the
    client did not (CLOSE_WAIT): each holds a descriptor of the client's."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(int(r.split()[2].split(":")[1], 16) == port and r.split()[3] == "08" for r in rows)


def test_pooled_connections_the_upstream_closed_are_let_go():
    async def answer_then_close(reader, writer):
        await asyncio.sleep(0.05)  # the calls overlap: one connection each
        writer.write(OK)
        await writer.drain()
        return False  # as a server closing its idle connections does, later

    async def scenario():
        client = UpstreamClient()
        async with Server(answer_then_close) as url:
            port = int(url.split(":")[2].split("/")[0])
            calls = (client.send(request(url), Deadlines.within(5)) for _ in range(40))
            assert {r.status for r in await asyncio.gather(*calls)} == {200}
            for _ in range(50):
                if not half_closed(port):
                    break
                await asyncio.sleep(0.1)
            assert half_closed(port) == 0
        await client.close()

    run(scenario())


def test_a_deadline_at_infinity_waits_and_one_past_or_nan_does_not():
    """As the Python client reads them: inf is no limit; a deadline already
    past, or NaN, is no time at all."""

    async def scenario():
        client = UpstreamClient()
        loop = asyncio.get_running_loop()
        async with Server(slow_then_ok) as url:
            endless = Deadlines(math.inf, math.inf, math.inf)
            assert (await client.send(request(url), endless)).status == 200
            for at in (loop.time() - 1, math.nan):
                with pytest.raises(TimeoutError):
                    await client.send(request(url), Deadlines(at, at, at))
        await client.close()

    run(scenario())


def test_a_client_outlives_a_loop_closed_with_a_call_in_flight_and_a_fork(scripted):
    """A loop closed while a call waited (its task never ended) and a worker
    forked from a process that used the client: the core's thread did not
    survive either, the next loop gets its own."""

    def slow(body: object) -> Json:
        time.sleep(0.3)
        return Json({"ok": True})

    scripted.queue("/v1/x", *[slow] * 3)
    client = UpstreamClient()

    async def call() -> int:
        response = await client.send(request(scripted.url + "/v1/x"), Deadlines.within(5))
        return response.status

    loop = asyncio.new_event_loop()
    left = loop.create_task(call())
    loop.run_until_complete(asyncio.sleep(0.05))
    loop.close()
    left._log_destroy_pending = False  # type: ignore[attr-defined]  # left so on purpose
    run(client.close())
    assert asyncio.run(call()) == 200

    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        with contextlib.suppress(BaseException):
            code = 0 if asyncio.run(asyncio.wait_for(call(), 5)) == 200 else 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    run(client.close())


def test_a_call_the_core_leaves_unanswered_fails_after_its_deadline():
    """The core answers every call by its deadline; should it not (a fault),
    the call fails a second later instead of hanging its caller."""

    async def scenario():
        client = UpstreamClient()
        async with Server(silent) as url:
            loop = asyncio.get_running_loop()
            call = asyncio.ensure_future(client.send(request(url), Deadlines.within(30)))
            await asyncio.sleep(0.05)
            offloaded = client._core()
            (token,) = offloaded._due
            offloaded._due[token] = loop.time()  # as if the core had missed it
            started = loop.time()
            with pytest.raises(UpstreamError, match="no outcome"):
                await call
            assert loop.time() - started < 1.5
            assert not offloaded._waiting and not offloaded._due
        await client.close()

    run(scenario())
