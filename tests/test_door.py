"""The edge of the service, whoever serves it: Granian itself, or the core's
front door in front of it (MODEL_ROUTER_DOOR, docs/data-plane.md). Each test
runs on both and expects the same; the door's own parts (the address it
hands the app, its drain, its answer when the app is away) are tested in
core_rs/src/door_tests.rs too."""

from __future__ import annotations

import httpx
import pytest

from conftest import EDGES, raw_exchange, within_one_minute
from model_router.door import PEER_HEADER

pytestmark = pytest.mark.parametrize("edge", EDGES)


@pytest.fixture(params=["sqlite"])
def backend(request):
    return request.param


def test_a_caller_cannot_choose_the_address_its_limits_count_under(make_server):
    server = make_server(MODEL_ROUTER_AUTH_FAILURES_PER_MINUTE="3")

    def refused_from(source: str, claimed: str) -> int:
        """A bad key sent from the loopback address `source`, claiming `claimed`."""
        transport = httpx.HTTPTransport(local_address=source)
        with httpx.Client(transport=transport, timeout=5) as client:
            headers = {"Authorization": "Bearer mr_nope_wrong", PEER_HEADER: claimed}
            return client.get(f"{server.url}/api/models", headers=headers).status_code

    within_one_minute(5)  # failures are counted per minute: not across the turn of one
    # Claiming a new address each time does not escape the count of the real one...
    assert [refused_from("127.0.0.2", f"10.9.9.{i}") for i in range(4)] == [401] * 3 + [429]
    # ...nor does claiming another's get it blocked: each real address counts alone.
    assert refused_from("127.0.0.3", "127.0.0.2") == 401


def test_a_request_framed_two_ways_is_never_read_as_two(make_server):
    server = make_server()
    smuggled = b"GET /api/models HTTP/1.1\r\nHost: x\r\n\r\n"
    # A length and chunked together: read as chunked, and the connection
    # closed after its answer, so what follows the chunked end is not a request.
    both = (
        b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled
    )
    answered = raw_exchange(server.port, both)
    assert answered.count(b"HTTP/1.1 ") == 1, answered
    # Two lengths that disagree, and a header folded over two lines: refused.
    for raw in (
        b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
    ):
        answered = raw_exchange(server.port, raw)
        assert answered.startswith(b"HTTP/1.1 400") or answered == b"", answered
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_http2_without_tls_and_http1_keep_alive(make_server):
    server = make_server()
    with httpx.Client(http1=False, http2=True, base_url=server.url) as h2:
        answer = h2.get("/health")
        assert answer.status_code == 200 and answer.http_version == "HTTP/2"
    with httpx.Client(base_url=server.url) as h1:
        answers = [h1.get("/health") for _ in range(3)]
        assert [a.status_code for a in answers] == [200] * 3
        assert all(a.http_version == "HTTP/1.1" for a in answers)
