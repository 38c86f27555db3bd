"""Limits per client address (failed authentications, requests in flight)
and raw path routing, against real servers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import socket
import struct
import time

import httpx
import pytest
import redis

from conftest import free_port, model_body, within_one_minute
from model_router._core import Clients
from model_router.ratelimit import FailedAuthentications
from model_router.settings import Settings
from model_router.store import open_store

BEHIND_INGRESS = {"MODEL_ROUTER_CLIENT_ADDRESS_HEADER": "X-Forwarded-For"}


def _from(address: str, key: str = "mr_nope_wrong") -> dict[str, str]:
    return {
        "Authorization": f"Bearer {key}",
        "X-Forwarded-For": f"203.0.113.9, {address}",  # the ingress appends the last
        "Connection": "close",  # fresh connections reach either worker
    }


def test_failed_authentications_are_limited_per_address_exactly_across_workers(make_server):
    server = make_server(workers=2, MODEL_ROUTER_AUTH_FAILURES_PER_MINUTE="5", **BEHIND_INGRESS)
    within_one_minute(10)  # failures are counted per minute: not across the turn of one
    answers = [httpx.get(f"{server.url}/api/models", headers=_from("10.0.0.1")) for _ in range(12)]
    assert [r.status_code for r in answers] == [401] * 5 + [429] * 7
    refused = answers[-1]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.json()["error"]["type"] == "too_many_failed_authentications"
    # Another address is not held to the first one's failures.
    other = httpx.get(f"{server.url}/api/models", headers=_from("10.0.0.2"))
    assert other.status_code == 401
    ok = httpx.get(f"{server.url}/api/models", headers=_from("10.0.0.2", server.admin_key))
    assert ok.status_code == 200


def test_an_address_over_its_failures_is_refused_even_with_a_good_key(make_server):
    server = make_server(MODEL_ROUTER_AUTH_FAILURES_PER_MINUTE="3", **BEHIND_INGRESS)
    within_one_minute(5)
    codes = [
        httpx.get(f"{server.url}/api/models", headers=_from("10.0.0.3")).status_code
        for _ in range(4)
    ]
    assert codes == [401, 401, 401, 429]
    # No more guessing: a right key from that address waits out the minute too.
    good = httpx.get(f"{server.url}/api/models", headers=_from("10.0.0.3", server.admin_key))
    assert good.status_code == 429 and "retry-after" in good.headers


@pytest.mark.parametrize("backend", ["redis"])
def test_an_unknown_key_id_costs_no_store_read(make_server, redis_url):
    server = make_server(MODEL_ROUTER_AUTH_FAILURES_PER_MINUTE="0")
    reads = redis.Redis.from_url(redis_url)

    def hget_calls() -> int:
        return int(reads.info("commandstats").get("cmdstat_hget", {}).get("calls", 0))

    before = hget_calls()
    for i in range(50):
        r = httpx.get(f"{server.url}/api/models", headers=_from("10.0.0.4", f"mr_unknown{i}_x"))
        assert r.status_code == 401
    # Other tests on this Redis may read a little meanwhile; 50 lookups would show.
    assert hget_calls() - before < 10
    reads.close()


def test_requests_in_flight_are_capped_per_client_address(make_server, make_mock):
    mock = make_mock()
    server = make_server(
        MODEL_ROUTER_MAX_IN_FLIGHT_PER_CLIENT="3", MOCK_PROVIDER_KEY="k", **BEHIND_INGRESS
    )
    server.client.post("/api/models", json=model_body("m1")).raise_for_status()
    endpoint = {"url": mock.operation_url, "apiKeyEnv": "MOCK_PROVIDER_KEY"}
    server.client.post("/api/models/m1/endpoints", json=endpoint).raise_for_status()
    mock.behave(latencyMs=1500)
    call = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}

    def chat(address: str, stream: bool = False) -> int:
        headers = _from(address, server.admin_key)
        body = {**call, "stream": stream}
        with httpx.Client(timeout=30) as c:
            r = c.post(f"{server.url}/v1/chat/completions", json=body, headers=headers)
            return r.status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        busy = [pool.submit(chat, "10.0.1.1", stream=i % 2 == 0) for i in range(6)]
        codes = sorted(f.result() for f in busy)
    assert codes == [200, 200, 200, 429, 429, 429]
    # Finished requests (streamed ones too) give their places back.
    mock.behave(latencyMs=0)
    assert [chat("10.0.1.1", stream=i % 2 == 0) for i in range(5)] == [200] * 5


def test_an_encoded_slash_stays_inside_its_path_segment(make_server):
    # ASGI hands the app the raw path; Granian's RSGI scope has none (docs/deployment.md).
    server = make_server(MODEL_ROUTER_INTERFACE="asgi")
    admin = server.client
    admin.post("/api/models", json=model_body("m1", id="m1")).raise_for_status()
    admin.post("/api/models/m1/health", json={"status": "degraded"}).raise_for_status()
    assert admin.get("/api/models/m1/health").status_code == 200
    # "m1%2Fhealth" is one id, not the health of m1.
    r = admin.get(httpx.URL(f"{server.url}/api/models/m1%2Fhealth"))
    assert r.status_code == 404 and r.json()["error"]["details"] == {"model": "m1/health"}
    r = admin.get(httpx.URL(f"{server.url}/api/models/a%2Fb/health"))
    assert r.status_code == 404 and r.json()["error"]["details"] == {"model": "a/b"}
    # Other escapes decode as before, and static routes still match.
    assert admin.get(httpx.URL(f"{server.url}/api/models/m%31")).json()["id"] == "m1"
    assert admin.get(httpx.URL(f"{server.url}/api/mod%65ls")).status_code == 200


WARNING = b"MODEL_ROUTER_CLIENT_ADDRESS_HEADER is unset"


def test_listening_beyond_loopback_without_the_address_header_warns_at_start(make_server):
    exposed = make_server(HOST="0.0.0.0")
    local = make_server()  # 127.0.0.1
    behind = make_server(HOST="0.0.0.0", **BEHIND_INGRESS)
    assert WARNING in exposed.log_path.read_bytes()
    assert WARNING not in local.log_path.read_bytes()
    assert WARNING not in behind.log_path.read_bytes()


@pytest.mark.parametrize(
    ("env", "warns"),
    [
        ({"HOST": "0.0.0.0"}, True),
        ({"HOST": "::"}, True),
        ({"HOST": "10.1.2.3"}, True),
        ({"HOST": "localhost"}, False),
        ({"HOST": "::1"}, False),
        ({"HOST": "0.0.0.0", "MODEL_ROUTER_CLIENT_ADDRESS_HEADER": "X-Real-IP"}, False),
        (
            {
                "HOST": "0.0.0.0",
                "MODEL_ROUTER_AUTH_FAILURES_PER_MINUTE": "0",
                "MODEL_ROUTER_MAX_IN_FLIGHT_PER_CLIENT": "0",
            },
            False,
        ),
    ],
)
def test_which_listeners_are_warned_about(env, warns):
    assert Settings.from_env(env).unattributed_clients is warns


def test_failures_counted_alone_while_the_store_is_away_are_forgotten_each_minute(tmp_path):
    env = {
        "MODEL_ROUTER_STORE_TIMEOUT_MS": "100",
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
    }
    store = open_store(Settings.from_env(env))
    failures = FailedAuthentications(store, limit=1, clients=Clients(0))
    minute = 29_000_000 * 60_000

    async def scenario() -> None:
        for i in range(300):
            await failures.failed(f"10.0.{i // 256}.{i % 256}", minute)
        assert await failures.failed("10.9.9.9", minute) is None
        assert await failures.failed("10.9.9.9", minute) is not None  # blocked, alone
        assert len(failures._alone) == 301 and failures.clients.unblock_ended(minute) == 1
        await failures.failed("10.9.9.10", minute + 60_000)
        assert len(failures._alone) == 1 and failures.clients.unblock_ended(minute + 60_000) == 0
        await store.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("interface", ["rsgi", "asgi"])
def test_a_stream_whose_client_left_before_it_started_gives_its_place_back(
    make_server, make_mock, interface
):
    mock = make_mock()
    server = make_server(
        MODEL_ROUTER_INTERFACE=interface,
        MODEL_ROUTER_MAX_IN_FLIGHT_PER_CLIENT="2",
        MOCK_PROVIDER_KEY="k",
        **BEHIND_INGRESS,
    )
    server.client.post("/api/models", json=model_body("m1")).raise_for_status()
    endpoint = {"url": mock.operation_url, "apiKeyEnv": "MOCK_PROVIDER_KEY"}
    server.client.post("/api/models/m1/endpoints", json=endpoint).raise_for_status()
    server.wait_for_config()
    mock.behave(latencyMs=800)
    body = json.dumps(
        {"model": "m1", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {server.admin_key}\r\nX-Forwarded-For: 10.0.2.1\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    for _ in range(4):  # each leaves while the router waits for the provider
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(head + body)
            time.sleep(0.2)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    time.sleep(2)  # the provider answered them all
    mock.behave(latencyMs=0)
    headers = _from("10.0.2.1", server.admin_key)
    call = {"model": "m1", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=call, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    # ...and each stream that lost its caller is accounted, cancelled.
    deadline = time.monotonic() + 5
    while True:
        recent = server.client.get("/api/metrics/requests?limit=10").json()["data"]
        outcomes = sorted(x["outcome"] for x in recent)
        if outcomes == ["cancelled"] * 4 + ["success"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert outcomes == ["cancelled"] * 4 + ["success"], outcomes
