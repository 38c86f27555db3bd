"""The edge under attack and odd clients, whoever serves it (Granian itself or
the core's front door, docs/data-plane.md): each test runs on both edges and
expects the door to do no worse than Granian alone."""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import os
import re
import socket
import threading
import time
from collections import Counter

import httpx
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, ResponseReceived, StreamEnded

from conftest import EDGES, model_body, raw_exchange, within_one_minute
from model_router.door import PEER_HEADER

pytestmark = pytest.mark.parametrize("edge", EDGES)


@pytest.fixture(params=["sqlite"])
def backend(request):
    return request.param


_CHUNK = (
    b'data: {"id": "c1", "object": "chat.completion.chunk", "created": 1700000000, '
    b'"model": "gpt", "choices": [{"index": 0, "delta": {"role": "assistant", '
    b'"content": "hi"}, "finish_reason": null}]}\n\n'
)


class StallingUpstream:
    """A provider that starts a stream, sends one chunk and then nothing,
    noting when the router closes the connection (how it cancels a call)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1/chat/completions"
        self.accepted = threading.Event()
        self.closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            received = b""
            while b"\r\n\r\n" not in received:
                received += conn.recv(65536)
            head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            conn.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
            conn.sendall(b"%x\r\n%s\r\n" % (len(_CHUNK), _CHUNK))
            self.accepted.set()
            while conn.recv(65536):
                pass
            self.closed.set()

    def close(self) -> None:
        self.listener.close()


def _with_model(server, url: str) -> None:
    pricing = {"inputPer1k": 0.01, "outputPer1k": 0.03}
    server.client.post("/api/models", json=model_body("m1", pricing=pricing)).raise_for_status()
    endpoint = {"url": url, "apiKeyEnv": "MOCK_PROVIDER_KEY"}
    server.client.post("/api/models/m1/endpoints", json=endpoint).raise_for_status()
    server.wait_for_config()


STREAM_CALL = b'{"model": "m1", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'


@pytest.fixture
def stalled(make_server):
    """A router whose model m1 is a StallingUpstream, and the upstream."""
    upstream = StallingUpstream()
    server = make_server(MOCK_PROVIDER_KEY="k")
    try:
        _with_model(server, upstream.url)
        yield server, upstream
    finally:
        upstream.close()


def _h1_chat_head(server, length: int, path: str = "/v1/chat/completions") -> bytes:
    """The head of an HTTP/1.1 POST (of a chat call) with the admin key."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {server.admin_key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def test_a_caller_that_leaves_mid_stream_cancels_the_upstream_call(stalled):
    server, upstream = stalled
    call = STREAM_CALL
    head = _h1_chat_head(server, len(call))
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as caller:
        caller.sendall(head + call)
        assert upstream.accepted.wait(10)
        streamed = b""
        while b"hi" not in streamed:  # the first chunk reached the caller
            part = caller.recv(65536)
            assert part, streamed
            streamed += part
    left = time.monotonic()
    assert upstream.closed.wait(10), "the upstream call was not cancelled"
    assert time.monotonic() - left < 3


_WHOLE_CALLS = {
    "/v1/chat/completions": {"model": "m1", "messages": [{"role": "user", "content": "hi"}]},
    "/v1/messages": {
        "model": "m1",
        "max_tokens": 9,
        "messages": [{"role": "user", "content": "hi"}],
    },
    "/api/route": {"agentType": "m1", "prompt": "hi"},
}


@pytest.mark.parametrize(
    ("interface", "stays_s", "path"),  # gone before the watch starts (0 s), and after
    [
        ("rsgi", 0, "/v1/chat/completions"),
        ("rsgi", 0.5, "/v1/chat/completions"),
        ("asgi", 0, "/v1/chat/completions"),
        ("asgi", 0.5, "/v1/chat/completions"),
        ("rsgi", 0.5, "/v1/messages"),
        ("rsgi", 0.5, "/api/route"),
    ],
)
def test_a_caller_that_leaves_a_plain_call_cancels_the_upstream_call(
    make_server, interface, stays_s, path
):
    """The answer is awaited whole; a caller gone before it closes the
    provider's connection (no tokens spent for nobody), and the request is
    accounted as 499 with its attempt cancelled, its in-flight place given back."""
    upstream = StallingUpstream()
    server = make_server(
        LOG_LEVEL="info",
        MOCK_PROVIDER_KEY="k",
        MODEL_ROUTER_INTERFACE=interface,
        MODEL_ROUTER_MAX_IN_FLIGHT_PER_CLIENT="1",
    )
    try:
        _with_model(server, upstream.url)
        call = json.dumps(_WHOLE_CALLS[path]).encode()
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as caller:
            caller.sendall(_h1_chat_head(server, len(call), path) + call)
            assert upstream.accepted.wait(10)
            time.sleep(stays_s)
        left = time.monotonic()
        assert upstream.closed.wait(10), "the upstream call was not cancelled"
        assert time.monotonic() - left < 3
    finally:
        upstream.close()
    deadline = time.monotonic() + 5  # (asked from the caller's address: its one place is free)
    while (recent := server.client.get("/api/metrics/requests?limit=1").json()["data"]) == []:
        assert time.monotonic() < deadline, "the request was not accounted"
        time.sleep(0.1)
    assert (recent[0]["status"], recent[0]["outcome"], recent[0]["attempts"]) == (
        499,
        "cancelled",
        1,
    )
    assert recent[0]["attemptDetails"][0]["outcome"] == "cancelled"
    cut_at = recent[0]["attemptDetails"][0]["endpointId"]
    assert (recent[0]["modelId"], recent[0]["endpointId"]) == ("m1", cut_at)
    # The provider may have read the prompt: it counts, estimated, and is paid for.
    assert recent[0]["promptTokens"] > 0 and recent[0]["estimated"] is True
    assert recent[0]["cost"] == pytest.approx(recent[0]["promptTokens"] * 0.01 / 1000)
    deadline = time.monotonic() + 5  # request lines are written by a beat of their own
    while not (
        lines := [x for x in server.log_path.read_text().splitlines() if '"status":499' in x]
    ):
        assert time.monotonic() < deadline, "the request's line was not written"
        time.sleep(0.05)
    assert '"level":"info"' in lines[0] and "the caller left" in lines[0]


def _h2_chat_head(server, extra: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    """The head of an HTTP/2 POST /v1/chat/completions with the admin key."""
    return [
        (":method", "POST"),
        (":path", "/v1/chat/completions"),
        (":scheme", "http"),
        (":authority", "x"),
        ("authorization", f"Bearer {server.admin_key}"),
        ("content-type", "application/json"),
        *(extra or []),
    ]


def test_a_caller_that_resets_an_http2_stream_cancels_the_upstream_call(stalled):
    server, upstream = stalled
    call = STREAM_CALL
    h2 = H2Connection(H2Configuration(client_side=True))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        h2.initiate_connection()
        h2.send_headers(1, _h2_chat_head(server, [("content-length", str(len(call)))]))
        h2.send_data(1, call, end_stream=True)
        s.sendall(h2.data_to_send())
        streamed = False
        while not streamed:
            for event in h2.receive_data(s.recv(65536)):
                streamed |= isinstance(event, DataReceived) and b"hi" in event.data
            s.sendall(h2.data_to_send())
        # The caller resets the stream and keeps its connection.
        h2.reset_stream(1)
        s.sendall(h2.data_to_send())
        left = time.monotonic()
        assert upstream.closed.wait(10), "the upstream call was not cancelled"
        assert time.monotonic() - left < 3


def _refused_as_too_large(status: bytes, body: bytes) -> None:
    """The app's own 413, whole: its status and its error, in OpenAI's shape."""
    assert status == b"413", body[:200]
    error = json.loads(body)["error"]
    assert error["type"] == "payload_too_large" and error["details"] == {"limit": 1_048_576}


@pytest.mark.parametrize("framing", ["declared", "chunked"])
def test_a_body_far_over_the_limit_gets_its_413_promptly(make_server, framing):
    server = make_server(MODEL_ROUTER_MAX_BODY_BYTES="1048576")
    size, piece = 64 * 1_048_576, b"x" * 65536
    head = _h1_chat_head(server, size)
    if framing == "chunked":
        head = head.replace(f"Content-Length: {size}".encode(), b"Transfer-Encoding: chunked")
        piece = b"10000\r\n" + piece + b"\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(head)
        started = time.monotonic()

        def upload() -> None:
            try:
                for _ in range(size // 65536):
                    s.sendall(piece)
            except OSError:
                pass  # the server stopped reading: expected

        threading.Thread(target=upload, daemon=True).start()
        answer = b""
        try:
            while part := s.recv(65536):
                answer += part
                head_end = answer.find(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: *(\d+)", answer[:head_end])
                if length and len(answer) >= head_end + 4 + int(length[1]):
                    break
        except ConnectionResetError:
            pass
        assert time.monotonic() - started < 5
        status_line, _, rest = answer.partition(b"\r\n")
        _refused_as_too_large(status_line.split()[1], rest.partition(b"\r\n\r\n")[2])
        assert re.search(rb"(?i)\r\nconnection: *close\r\n", answer)


def test_http2_requests_with_many_headers_are_served(make_server, edge):
    server = make_server()
    many = {f"x-extra-{i}": "v" for i in range(120)}
    with httpx.Client(http1=False, http2=True, base_url=server.url, timeout=10) as h2:
        answer = h2.get("/health", headers=many)
    if edge == "door" and answer.status_code == 431:
        # The door speaks HTTP/1.1 to the app, and Granian's HTTP/1.1 reads
        # at most 100 header lines (hyper's fixed limit). Known, not fixed.
        pytest.xfail("over 100 headers on HTTP/2 pass Granian alone, not the door")
    assert answer.status_code == 200, answer.text


def test_http1_requests_with_99_headers_are_served(make_server):
    server = make_server()
    many = {f"x-extra-{i}": "v" for i in range(90)}
    with httpx.Client(base_url=server.url, timeout=10) as h1:
        answer = h1.get("/health", headers=many)
        assert answer.status_code == 200, answer.text


def test_http2_requests_with_a_large_header_are_served(make_server):
    server = make_server()
    with httpx.Client(http1=False, http2=True, base_url=server.url, timeout=10) as h2:
        answer = h2.get("/health", headers={"x-large": "v" * 32_768})
        assert answer.status_code == 200, answer.text


def test_many_http2_streams_of_one_caller_do_not_shut_out_other_callers(
    make_server, make_mock, edge
):
    mock = make_mock()
    server = make_server(MODEL_ROUTER_MAX_CONNECTIONS="16", MOCK_PROVIDER_KEY="k")
    _with_model(server, mock.operation_url)
    mock.behave(latencyMs=1000)
    call = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
    headers = server.auth(server.admin_key)
    with httpx.Client(http1=False, http2=True, base_url=server.url, timeout=30) as h2:
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            calls = [
                pool.submit(h2.post, "/v1/chat/completions", json=call, headers=headers)
                for _ in range(24)
            ]
            outcomes = [c.exception() or c.result().status_code for c in calls]
        if edge == "door":
            # Each stream has its own connection to the app: all are served.
            assert outcomes == [200] * 24
        else:
            # Granian alone takes 16 requests at once per worker (its
            # backpressure) and now and then breaks the connection of a
            # caller past it (twice in 5 runs of the suite): its calls fail.
            assert all(o == 200 or isinstance(o, httpx.TransportError) for o in outcomes)
        # Another caller is still served at once.
        answer = httpx.get(f"{server.url}/health", timeout=5)
        assert answer.status_code == 200


def test_sigterm_with_idle_kept_alive_connections_exits_promptly(make_server, edge):
    if edge == "granian":
        pytest.skip("Granian alone waits out the grace period (over 25 s) here")
    server = make_server(MODEL_ROUTER_SHUTDOWN_GRACE_S="30")
    h1 = httpx.Client(base_url=server.url, timeout=5)
    h2 = httpx.Client(http1=False, http2=True, base_url=server.url, timeout=5)
    silent = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    try:
        assert h1.get("/health").status_code == 200
        assert h2.get("/health").status_code == 200
        assert server.proc is not None
        started = time.monotonic()
        server.proc.send_signal(15)
        server.proc.wait(25)
        assert time.monotonic() - started < 8
    finally:
        h1.close()
        h2.close()
        silent.close()


def test_odd_but_valid_http1_requests(make_server):
    server = make_server()
    port = server.port
    # Two pipelined requests, then one that closes.
    pipelined = raw_exchange(
        port,
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nHEAD /health HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert pipelined.count(b"HTTP/1.1 ") == 3, pipelined.decode()
    # HTTP/1.0, no Host.
    old = raw_exchange(port, b"GET /health HTTP/1.0\r\n\r\n")
    assert old.startswith(b"HTTP/1.") and b" 200 " in old.split(b"\r\n")[0], old
    assert old.rstrip().endswith(b"}"), old
    # Expect: 100-continue with a chunked body.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            b"POST /health HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        first = s.recv(65536)
        s.sendall(b"2\r\n{}\r\n0\r\n\r\n")
        rest = b""
        while chunk := s.recv(65536):
            rest += chunk
    answered = first + rest
    assert b"HTTP/1.1 100" in answered or b"HTTP/1.1 4" in first or b"HTTP/1.1 2" in first
    assert answered.count(b"HTTP/1.1 ") >= 1


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_connections_that_come_and_go_leave_no_descriptors_behind(make_server):
    server = make_server()
    pid = httpx.get(f"{server.url}/health/detailed", timeout=5).json()["workerPid"]
    with httpx.Client(base_url=server.url, timeout=5) as warm:
        warm.get("/health")
    before = _open_fds(pid)
    for i in range(2_000):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            if i % 2:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                while s.recv(65536):
                    pass
    time.sleep(2)
    assert _open_fds(pid) - before < 20


def test_the_servers_temporary_directories_go_with_it(make_server, tmp_path):
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    server = make_server(TMPDIR=str(private_tmp))
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
    server.stop()
    assert list(private_tmp.iterdir()) == []


def test_a_long_tmpdir_still_serves(make_server, tmp_path):
    # Too long for a Unix socket's path: the door's app socket goes to /tmp.
    long_tmp = tmp_path / ("t" * 100)
    long_tmp.mkdir()
    server = make_server(TMPDIR=str(long_tmp))
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200


def test_an_http2_body_far_over_the_limit_gets_its_413_promptly(make_server):
    server = make_server(MODEL_ROUTER_MAX_BODY_BYTES="1048576")
    h2 = H2Connection(H2Configuration(client_side=True))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        h2.initiate_connection()
        h2.send_headers(1, _h2_chat_head(server))  # no length: the body streams
        s.sendall(h2.data_to_send())
        started, status, body, ended, unsent = time.monotonic(), None, b"", False, b""
        s.setblocking(False)
        while not ended and time.monotonic() - started < 10:
            window = min(h2.local_flow_control_window(1), 16_384)
            if window > 0 and status is None:
                h2.send_data(1, b"x" * window)
            unsent += h2.data_to_send()
            with contextlib.suppress(BlockingIOError):
                unsent = unsent[s.send(unsent) :]
            try:
                data = s.recv(65536)
            except BlockingIOError:
                time.sleep(0.001)
                continue
            assert data, "the door closed the connection"
            for event in h2.receive_data(data):
                if isinstance(event, ResponseReceived) and event.stream_id == 1:
                    status = dict(event.headers)[b":status"]
                elif isinstance(event, DataReceived) and event.stream_id == 1:
                    body += event.data
                elif isinstance(event, StreamEnded) and event.stream_id == 1:
                    ended = True
        assert time.monotonic() - started < 5
        _refused_as_too_large(status or b"none", body)
        # The caller's connection carries on: only the stream was refused.
        s.setblocking(True)
        s.settimeout(10)
        health_head = [
            (":method", "GET"),
            (":path", "/health"),
            (":scheme", "http"),
            (":authority", "x"),
        ]
        h2.send_headers(3, health_head, end_stream=True)
        s.sendall(h2.data_to_send())
        health = None
        while health is None and (data := s.recv(65536)):
            for event in h2.receive_data(data):
                if isinstance(event, ResponseReceived) and event.stream_id == 3:
                    health = dict(event.headers)[b":status"]
        assert health == b"200"


def test_an_http2_caller_idle_past_the_header_timeout_is_still_served(make_server):
    server = make_server(MODEL_ROUTER_HEADER_READ_TIMEOUT_MS="500")
    headers = server.auth(server.admin_key)
    with httpx.Client(http1=False, http2=True, base_url=server.url, timeout=10) as h2:
        for _ in range(3):
            assert h2.get("/health").status_code == 200
            time.sleep(1.5)  # the app's side of the door may close an idle connection
            answer = h2.post("/api/models", json={"bad": 1}, headers=headers)
            assert answer.status_code == 400, answer.text


def test_idle_kept_alive_callers_cost_a_worker_one_descriptor_each(make_server):
    """Behind the door a caller's connection in use costs the worker three
    descriptors (the caller's, and both ends of its connection to the app);
    an idle one must cost one, as with Granian alone, or a worker runs out of
    descriptors with a third of the callers (seen under a limit of 450 with
    200 callers: Granian failing to accept, and once the whole server
    stopping)."""
    server = make_server()
    pid = httpx.get(f"{server.url}/health/detailed", timeout=5).json()["workerPid"]
    before = _open_fds(pid)
    callers = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(200)]
    try:
        for caller in callers:
            caller.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert all(caller.recv(65536).startswith(b"HTTP/1.1 200") for caller in callers)
        time.sleep(3)  # every caller idle, kept alive
        assert _open_fds(pid) - before < 250
    finally:
        for caller in callers:
            caller.close()


@pytest.mark.parametrize(
    "body",
    [
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",  # a chunk size that is not hex
        b"Content-Length: 100\r\n\r\n{}",  # and the caller stops sending
    ],
    ids=["malformed-chunk", "cut-short"],
)
def test_a_broken_request_body_is_the_callers_error_not_a_retry_later(make_server, body):
    server = make_server()
    head = (
        f"POST /api/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.admin_key}\r\n"
        "Content-Type: application/json\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(head + body)
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    assert 400 <= status < 500, answer  # no 503 with Retry-After, no 500
    assert b"retry-after" not in answer.lower()


def test_a_worker_killed_and_respawned_serves_again(make_server):
    server = make_server()
    pid = httpx.get(f"{server.url}/health/detailed", timeout=5).json()["workerPid"]
    os.kill(pid, 9)
    deadline = time.monotonic() + 30
    while True:
        try:
            answer = httpx.get(f"{server.url}/health/detailed", timeout=2)
            if answer.status_code == 200 and answer.json()["workerPid"] != pid:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "no worker serves after the kill"
        time.sleep(0.2)


def test_requests_answered_without_their_body_read_cost_no_later_request(make_server):
    """The app answers some requests without reading their body (a 404, a
    bad query), and then closes the connection unless what was left of the
    body came in one read: the caller's next request must still be answered
    (the door reused the app's connection, and some of these were a 503)."""
    server = make_server()
    statuses: Counter[int] = Counter()
    with httpx.Client(base_url=server.url, headers=server.auth(server.admin_key)) as caller:
        for i in range(1500):
            method = ("GET", "POST", "PATCH", "DELETE", "PUT")[i % 5]
            path = ("/api/", "/api/models", "/api/x/y")[i % 3]
            answer = caller.request(method, path, params={"offset": f"\r{i}"}, content=b"{}")
            statuses[answer.status_code] += 1
            if i % 7 == 0:
                time.sleep(0.002)  # the app's close has time to come
    assert max(statuses) < 500, statuses


def test_a_request_after_a_large_body_answered_unread_is_never_a_5xx(make_server):
    """Pipelined after a 40,000-byte body the app answers unread (a 404):
    the next request is answered, or, as Granian alone does, the connection
    closed; never a 5xx (the door reused the connection the app closed)."""
    server = make_server()
    body = b"x" * 40_000
    unread = (
        f"POST /api/x/y HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.admin_key}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    following = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    for _ in range(30):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(unread + following)
            answers = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := s.recv(65536):
                    answers += chunk
        statuses = [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", answers)]
        assert statuses in ([404], [404, 200]), answers[:300]


def test_expect_continue_is_answered_by_the_app(make_server):
    """A body the app refuses unread gets its 413 before the caller is told to
    send it; one the app reads gets `100 Continue` and then its answer."""
    server = make_server(MODEL_ROUTER_MAX_BODY_BYTES="1048576")

    def head(length: int) -> bytes:
        return (
            f"POST /api/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.admin_key}\r\n"
            f"Content-Type: application/json\r\nExpect: 100-continue\r\n"
            f"Content-Length: {length}\r\n\r\n"
        ).encode()

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(head(64 * 1_048_576))
        assert s.recv(65536).startswith(b"HTTP/1.1 413 "), "told to send a refused body"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(head(2))
        assert s.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"{}")
        assert s.recv(65536).startswith(b"HTTP/1.1 400 ")  # the app read the body


def test_no_spelling_of_the_peer_header_chooses_the_callers_address(make_server):
    """Duplicates, case, HTTP/2: the caller's bad keys count under its own
    address whatever address headers it sends."""
    server = make_server(MODEL_ROUTER_AUTH_FAILURES_PER_MINUTE="3")
    claims = [
        (PEER_HEADER.upper(), "10.1.1.1"),
        (PEER_HEADER, "10.1.1.2"),
        ("X-Model-Router-Peer", "10.1.1.3"),
    ]
    headers = [("authorization", "Bearer mr_nope_wrong"), *claims]
    transport = httpx.HTTPTransport(local_address="127.0.0.4", http2=True, http1=False)
    statuses = []
    within_one_minute(5)
    with httpx.Client(transport=transport, timeout=5) as h2:
        for _ in range(2):
            statuses.append(h2.get(f"{server.url}/api/models", headers=headers).status_code)
    raw = (
        b"GET /api/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer mr_nope_wrong\r\n"
        + b"".join(f"{name}: {value}\r\n".encode() for name, value in claims)
        + b"Connection: close\r\n\r\n"
    )
    for _ in range(2):
        with socket.create_connection(
            ("127.0.0.1", server.port), source_address=("127.0.0.4", 0)
        ) as s:
            s.sendall(raw)
            statuses.append(int(s.recv(65536).split(b" ", 2)[1]))
    assert statuses == [401, 401, 401, 429]


def test_calls_in_flight_when_a_worker_is_killed_end_promptly(make_server, make_mock):
    mock = make_mock()
    server = make_server(workers=2, MOCK_PROVIDER_KEY="k")
    _with_model(server, mock.operation_url)
    mock.behave(latencyMs=3000)
    call = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
    headers = {**server.auth(server.admin_key), "Connection": "close"}
    pid = httpx.get(f"{server.url}/health/detailed", timeout=5).json()["workerPid"]

    def chat() -> str:
        try:
            r = httpx.post(
                f"{server.url}/v1/chat/completions", json=call, headers=headers, timeout=20
            )
            return str(r.status_code)
        except httpx.TransportError as exc:
            return type(exc).__name__

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        calls = [pool.submit(chat) for _ in range(8)]
        time.sleep(1)
        os.kill(pid, 9)
        started = time.monotonic()
        outcomes = [c.result() for c in calls]
    assert time.monotonic() - started < 10, outcomes
    # The dead worker's calls break off; the other worker's are answered,
    # those its door handed to its app too (no 503: not the dead worker's app).
    assert "200" in outcomes, outcomes
    assert set(outcomes) <= {"200", "RemoteProtocolError", "ReadError"}, outcomes


def _accepting_pid(port: int, caller_port: int) -> int:
    """The process holding the loopback connection from `caller_port` to
    `port` that was accepted on the port (from /proc: its inode, then its
    holder)."""
    ends = (f"0100007F:{port:04X}", f"0100007F:{caller_port:04X}")
    with open("/proc/net/tcp") as table:
        inode = next((f[9] for f in map(str.split, table) if (f[1], f[2]) == ends), None)
    assert inode is not None, "the connection is not in /proc/net/tcp"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                        return int(pid)
    raise AssertionError("no process holds the connection")


def test_each_worker_hands_requests_to_its_own_app(make_server):
    """What a worker's door hands to the app is served by that worker's app
    (as with Granian alone, where a worker serves what it accepts), so a
    worker's death ends only its own calls."""
    server = make_server(workers=2)
    accepted_by: set[int] = set()
    for _ in range(40):
        caller = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        try:
            caller.request("GET", "/health/detailed")
            served_by = json.loads(caller.getresponse().read())["workerPid"]
            door = _accepting_pid(server.port, caller.sock.getsockname()[1])
        finally:
            caller.close()
        assert served_by == door
        accepted_by.add(door)
    assert len(accepted_by) == 2, "both workers took connections"
