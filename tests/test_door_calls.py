"""The routed calls the front door serves itself (docs/data-plane.md, step
3), end to end: each scenario on both edges, with the same assertions, so
that what the door answers and accounts is what the app would have."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections import Counter
from datetime import datetime
from types import SimpleNamespace

import httpx
import openai
import pytest
import scripted_upstream
from scripted_upstream import Sse, openai_stream
from test_calls import add_model, prefer
from test_log_lines import REQUEST_LINE_KEYS

from conftest import EDGES, within_one_minute

pytestmark = pytest.mark.parametrize("edge", EDGES)
scripted = scripted_upstream.scripted  # the fixture

CHAT = {"model": "auto", "messages": [{"role": "user", "content": "hello door"}]}


@pytest.fixture
def router(make_server):
    return make_server(MOCK_PROVIDER_KEY="provider-secret")


def samples(server, *names: str) -> dict[str, float]:
    """The samples of these metrics (name and labels as written), from
    /metrics (merged)."""
    found = {}
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith(names):
            sample, value = line.rsplit(" ", 1)
            found[sample] = float(value)
    return found


def door_calls(server) -> dict[str, float]:
    """model_router_door_calls_total by status."""
    counted = samples(server, "model_router_door_calls_total{")
    return {sample.split('"')[1]: value for sample, value in counted.items()}


def serve_m1(server, *mocks) -> None:
    """Model m1 on these mocks (primary first), preferred, on every worker."""
    add_model(server, "m1", *mocks)
    prefer(server, "m1")
    server.wait_for_config()


def chat(server, body=CHAT, **headers: str) -> httpx.Response:
    return server.client.post("/v1/chat/completions", json=body, headers=headers)


def failing(make_mock, *statuses: int) -> list:
    """A mock per status, each answering every call with it."""
    mocks = [make_mock("openai") for _ in statuses]
    for mock, status in zip(mocks, statuses, strict=True):
        mock.behave(status=status)
    return mocks


def records(server, count: int) -> list[dict]:
    """The latest `count` request records, once all are in the store."""
    deadline = time.time() + 5
    while True:
        data = server.client.get(f"/api/metrics/requests?limit={count}").json()["data"]
        routed = [r for r in data if r["route"] == "/v1/chat/completions"]
        if len(routed) >= count or time.time() > deadline:
            return routed
        time.sleep(0.05)


def test_a_chat_completion_is_answered_and_accounted_alike_on_both_edges(router, make_mock, edge):
    mock = make_mock("openai")
    serve_m1(router, mock)
    r = chat(router, **{"X-Agent-Type": "creative", "X-User-Id": "u-7", "X-Request-Id": "rq-1"})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Mock reply to: hello door"
    assert r.headers["x-request-id"] == "rq-1"
    assert (r.headers["x-model-router-model"], r.headers["x-model-router-endpoint"]) == (
        "m1",
        "m1-ep0",
    )
    assert r.headers["x-model-router-attempts"] == "1"
    assert float(r.headers["x-model-router-overhead-ms"]) >= 0
    assert int(r.headers["x-ratelimit-remaining"]) < int(r.headers["x-ratelimit-limit"])
    [record] = records(router, 1)
    assert record["requestId"] == "rq-1" and record["status"] == 200
    assert (record["agentType"], record["userId"]) == ("creative", "u-7")
    assert (record["modelId"], record["outcome"]) == ("m1", "success")
    assert record["promptTokens"] > 0 and record["cost"] > 0 and not record["estimated"]
    assert [a["outcome"] for a in record["attemptDetails"]] == ["success"]
    time.sleep(1.2)  # the metrics beat
    served = door_calls(router)
    assert served == ({"200": 1.0} if edge == "door" else {})
    # The same samples, whichever side took them (the door tallies its own).
    sampled = samples(
        router,
        "model_router_requests_total{",
        "model_router_upstream_attempts_total{",
        "model_router_tokens_total{",
        "model_router_request_duration_seconds_count{",
        "model_router_upstream_duration_seconds_count{",
        "model_router_overhead_seconds_count",
    )
    usage = r.json()["usage"]
    assert sampled == {
        'model_router_requests_total{model="m1",status="200"}': 1.0,
        'model_router_upstream_attempts_total{endpoint="m1-ep0",model="m1",outcome="success"}': 1.0,
        'model_router_tokens_total{kind="prompt",model="m1"}': usage["prompt_tokens"],
        'model_router_tokens_total{kind="completion",model="m1"}': usage["completion_tokens"],
        'model_router_request_duration_seconds_count{route="/v1/chat/completions"}': 1.0,
        'model_router_upstream_duration_seconds_count{model="m1"}': 1.0,
        "model_router_overhead_seconds_count": 1.0,
    }
    cost = samples(router, "model_router_cost_usd_total{")
    assert cost == {'model_router_cost_usd_total{model="m1"}': record["cost"]}


def request_lines(server, count: int) -> dict[str, dict]:
    """The routed calls' log lines by request id, once `count` are written
    (by a beat of their own); one line a call."""
    deadline = time.monotonic() + 5
    while True:
        entries = [
            json.loads(line)
            for line in server.log_path.read_text().splitlines()
            if line.startswith("{")
        ]
        routed = [e for e in entries if e.get("route") == "/v1/chat/completions"]
        if len(routed) >= count or time.monotonic() > deadline:
            by_id = {e["requestId"]: e for e in routed}
            assert len(by_id) == len(routed), "a call's line was written twice"
            return by_id
        time.sleep(0.05)


@pytest.mark.parametrize("level", ["info", "debug"])
def test_a_calls_log_line_is_written_alike_on_both_edges(make_server, make_mock, edge, level):
    """At INFO the door writes the line of a call it served itself
    (core_rs/src/log_line.rs) when masking leaves its strings as they are,
    and leaves the others to the app to mask; at DEBUG, where a line holds
    the reply, the app writes them all."""
    server = make_server(MOCK_PROVIDER_KEY="provider-secret", LOG_LEVEL=level)
    serve_m1(server, make_mock("openai"))
    for user, request_id in (("u-7", "rq-1"), ("jane.doe@example.com", "rq-2")):
        headers = {"X-Agent-Type": "creative", "X-User-Id": user, "X-Request-Id": request_id}
        assert chat(server, **headers).status_code == 200
    lines = request_lines(server, 2)
    plain, masked = lines["rq-1"], lines["rq-2"]
    assert list(plain)[: len(REQUEST_LINE_KEYS)] == REQUEST_LINE_KEYS
    assert plain | {"timestamp": None} == {
        "timestamp": None,
        "level": "info",
        "service": "model-router",
        "logger": "model_router.requests",
        "message": "Request routed successfully",
        "requestId": "rq-1",
        "route": "/v1/chat/completions",
        "workspaceId": None,
        "agentType": "creative",
        "userId": "u-7",
        "modelId": "m1",
        "endpointId": "m1-ep0",
        "status": 200,
        "latency": plain["latency"],
        "upstreamMs": plain["upstreamMs"],
        "tokens": plain["tokens"],
        "cost": plain["cost"],
        "attempts": 1,
    } | ({"prompt": None, "response": plain.get("response")} if level == "debug" else {})
    stamp = datetime.fromisoformat(plain["timestamp"])
    assert abs(stamp.timestamp() - time.time()) < 30 and plain["timestamp"].endswith("Z")
    assert isinstance(plain["latency"], float) and plain["latency"] >= plain["upstreamMs"] > 0
    assert plain["tokens"] > 0 and isinstance(plain["cost"], float) and plain["cost"] > 0
    if level == "debug":
        assert plain["response"] == "Mock reply to: hello door"
    assert masked["userId"] == "[EMAIL]" and "jane.doe" not in server.log_path.read_text()
    time.sleep(1.2)  # the metrics beat
    assert door_calls(server) == ({"200": 2.0} if edge == "door" else {})


def test_when_every_attempt_fails_the_error_is_the_apps_and_nothing_is_tried_twice(
    router, make_mock, edge
):
    first, second = failing(make_mock, 500, 503)
    serve_m1(router, first, second)
    r = chat(router)
    assert r.status_code == 502, r.text
    error = r.json()["error"]
    assert error["type"] == "upstream_unavailable"
    assert error["message"] == "every attempt failed (2 tried)"
    tried = [(a["endpointId"], a["outcome"], a["status"]) for a in error["details"]["attempts"]]
    assert tried == [("m1-ep0", "upstream_error", 500), ("m1-ep1", "upstream_error", 503)]
    assert (first.requests(), second.requests()) == (1, 1)
    [record] = records(router, 1)
    assert (record["status"], record["outcome"], record["attempts"]) == (
        502,
        "upstream_unavailable",
        2,
    )


def test_a_provider_refusing_the_callers_request_is_relayed_as_the_app_relays_it(
    router, make_mock, edge
):
    [mock], backup = failing(make_mock, 400), make_mock("openai")
    serve_m1(router, mock, backup)
    r = chat(router)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "upstream_client_error"
    assert error["details"]["upstream"]["error"]["type"] == "api_error"
    assert (mock.requests(), backup.requests()) == (1, 0)


def test_the_rate_limit_counts_every_call_once_whichever_path_serves_it(
    make_server, make_mock, edge
):
    server = make_server(RATE_LIMIT_MAX="20", MOCK_PROVIDER_KEY="k")
    mock = make_mock("openai")
    serve_m1(server, mock)
    key = server.client.post("/api/keys", json={"role": "agent"}).json()["key"]
    within_one_minute(10)  # the limit's window is the clock's minute
    asked = [
        httpx.post(f"{server.url}/v1/chat/completions", json=CHAT, headers=server.auth(key))
        for _ in range(21)
    ]
    assert [r.status_code for r in asked] == [200] * 20 + [429]
    remaining = [int(r.headers["x-ratelimit-remaining"]) for r in asked]
    assert remaining == [*range(19, -1, -1), 0]
    assert asked[-1].json()["error"]["type"] == "rate_limited"
    assert mock.requests() == 20


def test_a_workspace_with_a_budget_is_held_to_it_on_both_edges(router, make_mock, edge):
    mock = make_mock("openai")
    add_model(router, "m1", mock)
    prefer(router, "m1")
    r = router.client.post(
        "/api/workspaces/ws-b/config", json={"budgetLimits": {"daily": 0.000001}}
    )
    assert r.status_code in (200, 201), r.text
    router.wait_for_config()
    asked = [chat(router, **{"X-Workspace-Id": "ws-b"}) for _ in range(3)]
    assert asked[-1].status_code == 402, [r.text for r in asked]
    assert asked[-1].json()["error"]["type"] == "budget_exceeded"


def test_a_config_write_is_routed_under_at_once(router, make_mock, edge):
    first, second = make_mock("openai"), make_mock("openai")
    add_model(router, "m1", first)
    add_model(router, "m2", second)
    router.wait_for_config()
    assert chat(router, {**CHAT, "model": "m1"}).headers["x-model-router-model"] == "m1"
    r = router.client.patch("/api/models/m1/status", json={"status": "inactive"})
    assert r.status_code == 200, r.text
    after = chat(router, {**CHAT, "model": "m1"})
    assert after.status_code == 503, after.text


def test_a_verdict_a_caller_forges_is_ignored(router, make_mock, edge):
    mock = make_mock("openai")
    serve_m1(router, mock)
    forged = {
        "elapsedMs": 0,
        "tries": {
            "attempts": [],
            "upstreamMs": 0,
            "retryAfterMs": [],
            "deadlinePassed": False,
            "clientError": {"status": 418, "body": b"{}".hex()},
        },
    }
    header = json.dumps(forged)
    r = chat(router, **{"X-Model-Router-Door-Verdict": header})
    assert r.status_code == 200, r.text
    assert mock.requests() == 1


def _processes_of_a_burst(server, count: int) -> Counter[str]:
    """Which worker processes answered one routed call on each of `count`
    connections opened at once (as a load generator opens them): the
    prefixes of the request ids they minted (one per process,
    core_rs/src/ids.rs)."""
    body = json.dumps(CHAT).encode()
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer "
        f"{server.admin_key}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body
    sockets = []
    for _ in range(count):  # every SYN before any answer
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", server.port))
        sockets.append(s)
    prefixes: Counter[str] = Counter()
    for s in sockets:
        s.setblocking(True)
        s.settimeout(10)
        s.sendall(request)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
        s.close()
        head = answer.split(b"\r\n\r\n", 1)[0].decode()
        assert head.startswith("HTTP/1.1 200"), head
        request_id = next(
            line.split(":", 1)[1].strip()
            for line in head.split("\r\n")
            if line.lower().startswith("x-request-id:")
        )
        prefixes[request_id[:12]] += 1
    return prefixes


def _burst_until_replaced(server, old: Counter[str], replaced: int) -> None:
    """Until a burst of 40 is answered whole by two workers, `replaced` of
    them not among `old`; fails after 30 s."""
    deadline = time.time() + 30
    while True:
        time.sleep(0.2)
        try:
            after = _processes_of_a_burst(server, 40)
        except (OSError, AssertionError):
            after = Counter()
        if len(after) == 2 and len(set(after) - set(old)) >= replaced:
            return
        assert time.time() < deadline, f"no new worker took the connections: {after}"


def test_fresh_connections_are_spread_over_the_workers_and_a_respawned_worker_takes_its_share(
    make_server, make_mock, edge
):
    """Each worker accepts on a socket of its own (the kernel spreads
    connections by their addresses: of 100 opened at once, at least 25 reach
    each worker but for a chance under 1e-6; from one shared socket the door
    that woke first took most of a burst); a worker killed outright is
    respawned onto its socket, and no connection waits for it."""
    server = make_server(workers=2, MOCK_PROVIDER_KEY="k")
    serve_m1(server, make_mock("openai"))
    counts = _processes_of_a_burst(server, 100)
    assert len(counts) == 2 and min(counts.values()) >= 25, counts
    pids = {server.client.get("/health/detailed").json()["workerPid"] for _ in range(20)}
    os.kill(min(pids), signal.SIGKILL)
    _burst_until_replaced(server, counts, replaced=1)


def test_after_a_reload_every_socket_of_the_port_is_served(make_server, make_mock, edge):
    """On SIGHUP Granian starts each new worker before it stops the old one
    (each new worker waits for its predecessor's socket): after the reload a
    burst is answered whole, by the two new workers."""
    server = make_server(workers=2, MOCK_PROVIDER_KEY="k")
    serve_m1(server, make_mock("openai"))
    before = _processes_of_a_burst(server, 20)
    os.kill(server.proc.pid, signal.SIGHUP)
    _burst_until_replaced(server, before, replaced=2)


def test_an_https_endpoint_is_called_and_accounted_alike_on_both_edges(
    make_server, make_mock, pki, edge
):
    """Providers are called over https://: the door calls them itself,
    trusting what the app's client trusts (here SSL_CERT_FILE), whole and
    streamed."""
    router = make_server(MOCK_PROVIDER_KEY="provider-secret", SSL_CERT_FILE=str(pki["ca.crt"]))
    mock = make_mock("openai", pki)
    serve_m1(router, mock)
    for _ in range(2):
        r = chat(router)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "Mock reply to: hello door"
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key=router.admin_key, max_retries=0)
    stream = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "hello door"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == (
        "Mock reply to: hello door"
    )
    assert [r["outcome"] for r in records(router, 3)] == ["success"] * 3
    assert mock.requests() == 3
    time.sleep(1.2)  # the metrics beat
    assert door_calls(router) == ({"200": 3.0} if edge == "door" else {})


def test_an_https_endpoint_whose_certificate_is_not_trusted_is_not_called_on_either_edge(
    router, make_mock, pki, edge
):
    """The router trusts the system's authorities only: the handshake fails
    (TLS worked in the test above), the next endpoint serves."""
    untrusted, trusted = make_mock("openai", pki), make_mock("openai")
    serve_m1(router, untrusted, trusted)
    r = chat(router)
    assert r.status_code == 200, r.text
    [record] = records(router, 1)
    [failed, served] = record["attemptDetails"]
    assert (failed["endpointId"], failed["outcome"]) == ("m1-ep0", "connect_error"), failed
    assert (served["endpointId"], served["outcome"]) == ("m1-ep1", "success")
    assert (untrusted.requests(), trusted.requests()) == (0, 1)
    time.sleep(1.2)  # the metrics beat
    assert door_calls(router) == ({"200": 1.0} if edge == "door" else {})


def test_a_stream_is_relayed_and_accounted_alike_on_both_edges(router, make_mock, edge):
    """The official SDK's stream: the same content, headers and record
    whichever edge serves it."""
    mock = make_mock("openai")
    serve_m1(router, mock)
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key=router.admin_key, max_retries=0)
    with client.chat.completions.with_streaming_response.create(
        model="auto",
        messages=[{"role": "user", "content": "hello door"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"X-Request-Id": "rq-s"},
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-request-id"] == "rq-s"
        assert response.headers["x-model-router-endpoint"] == "m1-ep0"
        assert response.headers["x-model-router-attempts"] == "1"
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Mock reply to: hello door"
    usage = chunks[-1].usage
    [record] = records(router, 1)
    assert (record["requestId"], record["status"], record["outcome"]) == ("rq-s", 200, "success")
    assert record["stream"] and not record["estimated"]
    assert (record["promptTokens"], record["completionTokens"]) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )
    time.sleep(1.2)  # the metrics beat
    assert door_calls(router) == ({"200": 1.0} if edge == "door" else {})


def test_a_streams_overhead_leaves_out_the_providers_wait_for_its_first_content(
    router, scripted, edge
):
    """A provider that thinks for 0.4 s before its first token: the head
    comes after that wait, and its X-Model-Router-Overhead-Ms is the router's
    own time only, on both edges."""
    events = openai_stream("slow to start")
    events[1] = (*events[1], 0.4)  # before the first content (events[0]: the role)
    scripted.queue("/v1/chat/completions", Sse(events))
    upstream = SimpleNamespace(flavor="openai", operation_url=f"{scripted.url}/v1/chat/completions")
    serve_m1(router, upstream)
    started = time.perf_counter()
    r = chat(router, {**CHAT, "stream": True})
    assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
    assert time.perf_counter() - started >= 0.4
    assert 0 <= float(r.headers["x-model-router-overhead-ms"]) < 200
    [record] = records(router, 1)
    assert record["upstreamMs"] >= 400  # the wait counted once, as the upstream's
    time.sleep(1.2)  # the metrics beat
    assert door_calls(router) == ({"200": 1.0} if edge == "door" else {})


def test_a_stream_that_fails_mid_way_ends_with_the_error_event_on_both_edges(
    router, make_mock, edge
):
    """Before its first content a broken stream fails over; after, the
    caller's client reads the error event and nothing is tried again."""
    early, late, good = (make_mock("openai") for _ in range(3))
    early.behave(streamError=True, streamErrorAt=0)
    late.behave(streamError=True, streamErrorAt=4, latencyMs=80)  # reads apart
    serve_m1(router, early, good)
    body = {**CHAT, "stream": True}
    r = chat(router, body)
    assert r.status_code == 200 and r.headers["x-model-router-attempts"] == "2"
    assert r.headers["x-model-router-endpoint"] == "m1-ep1"
    assert '"upstream_error"' not in r.text and r.text.endswith("data: [DONE]\n\n")
    add_model(router, "m2", late, good)
    router.wait_for_config()
    r = chat(router, {**body, "model": "m2"})
    assert r.status_code == 200 and r.headers["x-model-router-endpoint"] == "m2-ep0"
    assert r.text.endswith(
        'data: {"error":{"message":"the model\'s stream failed","type":"upstream_error"}}\n\n'
    )
    assert good.requests() == 1
    first, failed = sorted(records(router, 2), key=lambda r: r["timestamp"])
    assert [a["outcome"] for a in first["attemptDetails"]] == ["stream_error", "success"]
    assert (failed["status"], failed["outcome"]) == (200, "stream_error")
