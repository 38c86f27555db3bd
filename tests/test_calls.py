"""Calling models end to end: a real router in front of real mock providers on
loopback, driven over HTTP and through the official OpenAI SDK."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import openai
import pytest

from conftest import EDGES, model_body
from model_router.api.calls import _Begun

PRICING = {"inputPer1k": 0.01, "outputPer1k": 0.03}
SPEC_ROUTE = {
    "id": "req-12345",
    "agentType": "creative",
    "workspaceId": "ws-marketing-001",
    "userId": "user-123",
    "prompt": "Generate a creative marketing message for our new product",
    "parameters": {"temperature": 0.8, "maxTokens": 500},
    "metadata": {"requestType": "completion", "priority": "normal"},
}


def add_model(server, model_id: str, *mocks, provider: str | None = None, **fields) -> None:
    """A model whose endpoints are these mocks, in order (primary, then backups)."""
    c = server.client
    flavor = provider or mocks[0].flavor
    body = model_body(model_id, provider=flavor, pricing=PRICING, **fields)
    assert c.post("/api/models", json=body).status_code == 201
    for i, mock in enumerate(mocks):
        r = c.post(
            f"/api/models/{model_id}/endpoints",
            json={
                "id": f"{model_id}-ep{i}",
                "url": mock.operation_url,
                "type": "primary" if i == 0 else "backup",
                "apiKeyEnv": "MOCK_PROVIDER_KEY",
            },
        )
        assert r.status_code == 201, r.text


def prefer(server, *model_ids: str) -> None:
    r = server.client.post(
        "/api/agents/creative/preferences", json={"preferredModels": list(model_ids)}
    )
    assert r.status_code in (200, 201)


def cost(prompt_tokens: int, completion_tokens: int) -> float:
    return round(prompt_tokens * 0.01 / 1000 + completion_tokens * 0.03 / 1000, 9)


@pytest.fixture
def router(make_server):
    return make_server(MOCK_PROVIDER_KEY="provider-secret")


@pytest.mark.parametrize("flavor", ["openai", "azure", "anthropic"])
def test_the_spec_request_through_each_flavor(router, make_mock, flavor):
    mock = make_mock(flavor)
    add_model(router, "m1", mock)
    router.wait_for_config()
    r = router.client.post("/api/route", json=SPEC_ROUTE)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["requestId"] == "req-12345" and body["id"].startswith("response-")
    assert body["modelId"] == "m1" and body["endpointId"] == "m1-ep0"
    assert body["response"] == "Mock reply to: " + SPEC_ROUTE["prompt"]
    assert body["status"] == "success" and body["timestamp"].endswith("Z")
    usage = body["usage"]
    prompt_tokens = (len(SPEC_ROUTE["prompt"]) + 3) // 4
    completion_tokens = (len(body["response"]) + 3) // 4
    assert (usage["promptTokens"], usage["completionTokens"]) == (prompt_tokens, completion_tokens)
    assert usage["totalTokens"] == prompt_tokens + completion_tokens
    assert usage["cost"] == cost(prompt_tokens, completion_tokens)
    assert usage["estimated"] is False
    assert isinstance(body["latency"], int)
    assert [a["outcome"] for a in body["attempts"]] == ["success"]
    assert r.headers["x-model-router-model"] == "m1"
    assert float(r.headers["x-model-router-overhead-ms"]) >= 0


@pytest.mark.parametrize("flavor", ["openai", "azure", "anthropic"])
def test_openai_sdk_through_the_router(router, make_mock, flavor):
    mock = make_mock(flavor, stream_chunks=6)
    add_model(router, "m1", mock)
    prefer(router, "m1")
    router.wait_for_config()
    client = openai.OpenAI(
        base_url=f"{router.url}/v1",
        api_key=router.admin_key,
        default_headers={"X-Workspace-Id": "ws-1", "X-Agent-Type": "creative"},
    )
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello router"},
    ]
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=messages)
    reply = raw.parse()
    assert reply.choices[0].message.content == "Mock reply to: hello router"
    assert reply.model == "m1" and reply.usage.total_tokens > 0
    assert raw.headers["x-model-router-model"] == "m1"
    assert raw.headers["x-model-router-attempts"] == "1"

    by_id = client.chat.completions.create(model="m1", messages=messages)
    assert by_id.choices[0].message.content == "Mock reply to: hello router"
    by_agent = client.chat.completions.create(model="creative", messages=messages)
    assert by_agent.choices[0].finish_reason == "stop"

    chunks = list(
        client.chat.completions.create(
            model="auto", messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Mock reply to: hello router"
    assert (
        chunks[-1].usage is not None
        and chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    )
    assert [m.id for m in client.models.list()] == ["auto", "m1"]


def test_openai_errors_use_openais_shape(router):
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="mr_nope_bad", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "x"}])
    assert err.value.body["type"] == "unauthorized"
    ok = openai.OpenAI(base_url=f"{router.url}/v1", api_key=router.admin_key, max_retries=0)
    with pytest.raises(openai.InternalServerError) as err:  # nothing configured: 503
        ok.chat.completions.create(model="auto", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 503 and err.value.body["code"] == "no_eligible_model"
    with pytest.raises(openai.BadRequestError):
        ok.chat.completions.create(model="auto", messages=[])


def test_streams_arrive_chunk_by_chunk_not_buffered(router, make_mock):
    mock = make_mock("openai", stream_chunks=5, latency_ms=1000)  # 200 ms between chunks
    add_model(router, "m1", mock)
    prefer(router, "m1")
    router.wait_for_config()
    arrivals = []
    with httpx.stream(
        "POST",
        f"{router.url}/v1/chat/completions",
        headers=router.auth(router.admin_key),
        json={"model": "auto", "stream": True, "messages": [{"role": "user", "content": "x" * 40}]},
        timeout=30,
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data:"):
                arrivals.append(time.perf_counter())
    assert len(arrivals) >= 6
    assert arrivals[-1] - arrivals[1] > 0.6, "the chunks came together: the stream was buffered"


def test_failover_when_the_primary_is_stopped_mid_test(router, make_mock):
    primary, backup = make_mock("openai"), make_mock("openai")
    add_model(router, "m1", primary, backup)
    prefer(router, "m1")
    router.wait_for_config()
    failures, served_by = [], []
    done = threading.Event()

    def load() -> None:
        with httpx.Client(
            base_url=router.url, headers=router.auth(router.admin_key), timeout=30
        ) as c:
            while not done.is_set():
                r = c.post("/api/route", json={**SPEC_ROUTE, "workspaceId": None})
                (served_by if r.status_code == 200 else failures).append(
                    r.json().get("endpointId") if r.status_code == 200 else r.text
                )

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    primary.stop()
    time.sleep(1.0)
    done.set()
    for t in threads:
        t.join()
    assert failures == []
    assert "m1-ep0" in served_by and "m1-ep1" in served_by
    assert served_by[-1] == "m1-ep1"
    # The dead endpoint's breaker opened: later requests skip it outright.
    r = router.client.post("/api/route", json={**SPEC_ROUTE, "workspaceId": None}).json()
    assert [a["endpointId"] for a in r["attempts"]] == ["m1-ep1"]


def test_failover_to_the_next_model(router, make_mock):
    down, up = make_mock("openai"), make_mock("anthropic")
    add_model(router, "first", down)
    add_model(router, "second", up)
    prefer(router, "first", "second")
    router.wait_for_config()
    down.behave(status=503)
    r = router.client.post("/api/route", json=SPEC_ROUTE)
    assert r.status_code == 200
    body = r.json()
    assert body["modelId"] == "second"
    assert [(a["modelId"], a["outcome"], a["status"]) for a in body["attempts"]] == [
        ("first", "upstream_error", 503),
        ("second", "success", 200),
    ]


def test_429_with_retry_after_opens_the_breaker_for_that_long(router, make_mock):
    limited, other = make_mock("openai"), make_mock("openai")
    add_model(router, "m1", limited, other)
    prefer(router, "m1")
    router.wait_for_config()
    limited.behave(status=429, retryAfter=120)
    first = router.client.post("/api/route", json=SPEC_ROUTE).json()
    assert [(a["outcome"], a["status"]) for a in first["attempts"]] == [
        ("rate_limited", 429),
        ("success", 200),
    ]
    seen = limited.requests()
    for _ in range(5):
        again = router.client.post("/api/route", json=SPEC_ROUTE).json()
        assert [a["endpointId"] for a in again["attempts"]] == ["m1-ep1"]
    assert limited.requests() == seen, "the limited endpoint was called during its Retry-After"


def test_timeouts_fail_over_and_the_deadline_holds(router, make_mock):
    slow, fast = make_mock("openai", latency_ms=3000), make_mock("openai")
    add_model(router, "m1", slow, fast)
    router.client.patch("/api/models/m1/status", json={"status": "active"})
    # The slow endpoint gets a 300 ms budget.
    export = router.client.get("/api/config/export").json()
    for e in export["config"]["endpoints"]:
        if e["id"] == "m1-ep0":
            e["timeoutMs"] = 300
    assert router.client.post("/api/config/import", json=export).status_code == 200
    prefer(router, "m1")
    router.wait_for_config()
    started = time.perf_counter()
    r = router.client.post("/api/route", json=SPEC_ROUTE).json()
    assert time.perf_counter() - started < 2.5
    assert [a["outcome"] for a in r["attempts"]] == ["timeout", "success"]

    fast.stop()
    started = time.perf_counter()
    late = router.client.post("/api/route", json={**SPEC_ROUTE, "timeoutMs": 200})
    assert time.perf_counter() - started < 2.0
    assert late.status_code in (502, 504)


def test_malformed_upstream_json_fails_over_then_502(router, make_mock):
    broken, good = make_mock("openai"), make_mock("openai")
    add_model(router, "m1", broken, good)
    prefer(router, "m1")
    router.wait_for_config()
    broken.behave(malformed=True)
    r = router.client.post("/api/route", json=SPEC_ROUTE).json()
    assert [a["outcome"] for a in r["attempts"]] == ["malformed", "success"]
    good.behave(malformed=True)
    failed = router.client.post("/api/route", json=SPEC_ROUTE)
    assert failed.status_code == 502
    error = failed.json()["error"]
    assert error["type"] == "upstream_unavailable"
    assert {a["outcome"] for a in error["details"]["attempts"]} <= {"malformed"}


def test_a_4xx_goes_back_to_the_caller_without_failover(router, make_mock):
    first, second = make_mock("openai"), make_mock("openai")
    add_model(router, "m1", first, second)
    prefer(router, "m1")
    router.wait_for_config()
    first.behave(status=400)
    r = router.client.post("/api/route", json=SPEC_ROUTE)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "upstream_client_error"
    assert second.requests() == 0


def test_an_error_event_inside_a_stream_is_a_failure_and_fails_over_before_the_first_byte(
    router, make_mock
):
    bad, good = make_mock("openai"), make_mock("openai")
    add_model(router, "m1", bad, good)
    prefer(router, "m1")
    router.wait_for_config()
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key=router.admin_key)
    messages = [{"role": "user", "content": "hi"}]
    for failure in ({"status": 500}, {"streamError": True, "streamErrorAt": 0}):
        bad.behave(reset=True)
        bad.behave(**failure)
        chunks = list(client.chat.completions.create(model="auto", messages=messages, stream=True))
        assert (
            "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            == "Mock reply to: hi"
        )
    time.sleep(1.2)
    recent = router.client.get("/api/metrics/requests?limit=1").json()["data"][0]
    assert (recent["endpointId"], recent["attempts"], recent["outcome"]) == ("m1-ep1", 2, "success")

    # Once the first byte is out there is no failing over: the error ends the stream.
    bad.stop()
    good.behave(streamError=True, latencyMs=400)  # events 50 ms apart
    with httpx.stream(
        "POST",
        f"{router.url}/v1/chat/completions",
        headers=router.auth(router.admin_key),
        json={"model": "auto", "stream": True, "messages": messages},
    ) as r:
        assert r.status_code == 200
        body = r.read().decode()
    assert body.index('"role":"assistant"') < body.index('"upstream_error"')
    time.sleep(1.2)
    recent = router.client.get("/api/metrics/requests?limit=1").json()["data"][0]
    assert recent["outcome"] == "stream_error"


@pytest.mark.parametrize("edge", EDGES)
def test_a_client_that_leaves_mid_stream_cancels_the_upstream_call(router, make_mock):
    mock = make_mock("openai", stream_chunks=20, latency_ms=4000)
    add_model(router, "m1", mock)
    prefer(router, "m1")
    router.wait_for_config()
    with httpx.stream(
        "POST",
        f"{router.url}/v1/chat/completions",
        headers=router.auth(router.admin_key),
        json={"model": "auto", "stream": True, "messages": [{"role": "user", "content": "x" * 80}]},
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                break  # leave after the first event
    time.sleep(1.5)
    recent = router.client.get("/api/metrics/requests?limit=1").json()["data"][0]
    assert recent["outcome"] == "cancelled" and recent["latencyMs"] < 3000


def test_a_stream_closed_before_its_first_chunk_was_sent_still_cleans_up():
    """A response whose start failed closes its stream unsent: begun, it runs
    the cleanup (upstream call, holds, accounting) an unstarted generator
    would skip."""
    cleaned: list[str] = []

    async def chunks(name: str):
        try:
            yield b"a"
            yield b"b"
        finally:
            cleaned.append(name)

    async def scenario() -> None:
        await chunks("unstarted").aclose()
        await (await _Begun.begin(chunks("begun"))).aclose()
        assert [c async for c in await _Begun.begin(chunks("read"))] == [b"a", b"b"]

    asyncio.run(scenario())
    assert cleaned == ["begun", "read"]  # "unstarted" ran nothing: why streams are begun


def test_costs_are_exact_and_spent_budgets_stop_a_workspace_across_workers(make_server, make_mock):
    router = make_server(workers=2, MOCK_PROVIDER_KEY="k")
    mock = make_mock("openai")
    add_model(router, "m1", mock)
    prefer(router, "m1")
    # Each call: 15 prompt + 18 completion tokens = $0.00069; a $0.002 daily budget.
    # Its worst case (max 20 tokens out) is reserved before it is sent, so two
    # calls fit and a third would not, whatever the timing.
    router.client.post("/api/workspaces/ws-b/config", json={"budgetLimits": {"daily": 0.002}})
    router.wait_for_config()
    request = {**SPEC_ROUTE, "workspaceId": "ws-b", "parameters": {"maxTokens": 20}}
    one = router.client.post("/api/route", json=request).json()
    assert one["usage"]["cost"] == cost(
        one["usage"]["promptTokens"], one["usage"]["completionTokens"]
    )
    spent = one["usage"]["cost"]
    statuses = []
    for _ in range(8):
        r = httpx.post(
            f"{router.url}/api/route",
            json=request,
            headers={**router.auth(router.admin_key), "Connection": "close"},
        )
        statuses.append(r.status_code)
        if r.status_code == 200:
            spent += r.json()["usage"]["cost"]
        time.sleep(0.4)
    assert statuses.count(200) == 1 and spent <= 0.002
    time.sleep(1.2)  # the spend flush: what was spent is in the store, leases handed back
    stopped = httpx.post(
        f"{router.url}/api/route", json=request, headers=router.auth(router.admin_key)
    )
    assert stopped.status_code == 402
    error = stopped.json()["error"]
    assert error["type"] == "budget_exceeded" and error["details"]["limit"] == 0.002
    assert error["details"]["spent"] == pytest.approx(spent, abs=1e-9)
    other = router.client.post("/api/route", json={**SPEC_ROUTE, "workspaceId": "ws-other"})
    assert other.status_code == 200


def test_metrics_and_recent_requests_across_workers(make_server, make_mock):
    router = make_server(workers=2, MOCK_PROVIDER_KEY="k")
    mock = make_mock("openai")
    add_model(router, "m1", mock)
    rule = router.client.post(
        "/api/routing/rules",
        json={
            "name": "all creative",
            "condition": {"agentType": ["creative"]},
            "targetModels": [{"modelId": "m1"}],
        },
    ).json()
    router.wait_for_config()
    for _ in range(10):
        r = httpx.post(
            f"{router.url}/api/route",
            json=SPEC_ROUTE,
            headers={**router.auth(router.admin_key), "Connection": "close"},
        )
        assert r.status_code == 200
    time.sleep(1.5)
    text = httpx.get(f"{router.url}/metrics").text
    assert 'model_router_requests_total{model="m1",status="200"} 10.0' in text
    assert "model_router_request_duration_seconds_bucket" in text
    assert "model_router_overhead_seconds_bucket" in text
    assert "model_router_upstream_duration_seconds_bucket" in text
    assert (
        f'model_router_routing_rule_matches{{name="all creative",rule="{rule["id"]}"}} 10.0' in text
    )
    assert 'model_router_model_health_score{model="m1"}' in text
    recent = router.client.get("/api/metrics/requests?limit=5").json()
    assert recent["total"] == 5
    first = recent["data"][0]
    assert (first["modelId"], first["status"], first["agentType"]) == ("m1", 200, "creative")
    assert first["cost"] > 0 and first["promptTokens"] > 0
    assert router.client.get("/api/metrics/requests?limit=5000").status_code == 400


def test_logs_are_json_with_pii_masked(make_server, make_mock):
    router = make_server(MOCK_PROVIDER_KEY="k", LOG_LEVEL="debug")
    mock = make_mock("openai")
    add_model(router, "m1", mock)
    prefer(router, "m1")
    router.wait_for_config()
    secret_prompt = (
        "Email jane.doe@example.com or call +1 415-555-0132, card 4111 1111 1111 1111, "
        "key sk-abcdefghijklmnopqrstuv"
    )
    r = router.client.post(
        "/api/route", json={**SPEC_ROUTE, "id": "req-pii", "prompt": secret_prompt}
    )
    assert r.status_code == 200
    deadline = time.monotonic() + 5  # request lines are written by a beat of their own
    while '"req-pii"' not in router.log_path.read_text():
        assert time.monotonic() < deadline, "the request's line was not written"
        time.sleep(0.05)
    time.sleep(0.2)  # a second line would be as late
    lines = [
        json.loads(line)
        for line in router.log_path.read_text().splitlines()
        if line.startswith("{")
    ]
    routed = [entry for entry in lines if entry.get("requestId") == "req-pii"]
    assert len(routed) == 1
    entry = routed[0]
    assert entry["message"] == "Request routed successfully" and entry["modelId"] == "m1"
    assert entry["service"] == "model-router" and entry["level"] == "info"
    text = router.log_path.read_text()
    for leaked in (
        "jane.doe@example.com",
        "415-555-0132",
        "4111 1111 1111 1111",
        "sk-abcdefghijklmnop",
        router.admin_key,
    ):
        assert leaked not in text
    assert (
        "[EMAIL]" in entry["prompt"]
        and "[CARD]" in entry["prompt"]
        and "[PHONE]" in entry["prompt"]
    )


def test_granians_own_lines_are_json_in_the_routers_schema(make_server):
    router = make_server(workers=2, LOG_LEVEL="info")
    router.stop()  # its shutdown lines too
    lines = router.log_path.read_text().splitlines()
    entries = [json.loads(line) for line in lines if line.strip()]  # every line is JSON
    assert len(entries) == len([line for line in lines if line.strip()])
    for entry in entries:
        assert {"timestamp", "level", "service", "logger", "message"} <= set(entry), entry
        assert entry["service"] == "model-router" and entry["timestamp"].endswith("Z")
    granian = [e["message"] for e in entries if e["logger"].startswith("_granian")]
    assert any(m.startswith("Starting granian") for m in granian), granian
    assert any(m.startswith("Spawning worker") for m in granian), granian
    assert any(m.startswith("Shutting down granian") for m in granian), granian
