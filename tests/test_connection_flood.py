"""Nobody starves the router of connections: while 2,000 idle connections and
500 slowloris sockets (headers sent a byte at a time) are open against a real
router, every request of a legitimate client succeeds."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from conftest import EDGES


@pytest.fixture(params=["sqlite"])
def backend(request):
    return request.param


@pytest.mark.parametrize("edge", EDGES)
def test_idle_and_slowloris_connections_do_not_starve_a_client(make_server):
    router = make_server(workers=2, MODEL_ROUTER_HEADER_READ_TIMEOUT_MS="2000")
    port = int(router.url.rsplit(":", 1)[1])
    idle: list[socket.socket] = []
    for _ in range(2_000):
        idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    slow = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(500)]
    stop = threading.Event()

    def drip() -> None:
        """A slowloris: a request line, then a header byte now and then, forever."""
        for s in slow:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        while not stop.wait(0.5):
            for s in slow:
                try:
                    s.sendall(b"X")
                except OSError:
                    pass  # the router cut it off: what it should do

    dripping = threading.Thread(target=drip, daemon=True)
    dripping.start()
    try:
        time.sleep(0.5)
        answers = []
        with httpx.Client(base_url=router.url, headers=router.auth(router.admin_key)) as client:
            for _ in range(50):
                answers.append(client.get("/api/models", timeout=5).status_code)
                fresh = httpx.get(
                    f"{router.url}/health", headers={"Connection": "close"}, timeout=5
                )
                answers.append(fresh.status_code)
        assert answers == [200] * 100
    finally:
        stop.set()
        dripping.join(5)
        for s in idle + slow:
            s.close()
