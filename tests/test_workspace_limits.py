"""Per-workspace model calls and tokens per minute (`budgetLimits.
requestsPerMinute`, `.tokensPerMinute`), exact across 2 workers."""

from __future__ import annotations

import asyncio
import time

import httpx
from test_store_faults import RedisServer

from conftest import Server, model_body, within_one_minute
from model_router.ratelimit import LEASE

CALL = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


async def fire(router, workspace: str, n: int) -> list[httpx.Response]:
    """n calls at once for the workspace."""
    limits = httpx.Limits(max_connections=n)
    headers = {**router.auth(router.admin_key), "X-Workspace-Id": workspace}
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        url = f"{router.url}/v1/chat/completions"
        return await asyncio.gather(
            *(client.post(url, json=CALL, headers=headers) for _ in range(n))
        )


def _router(make_server, make_mock, limits: dict[str, int], workspace: str, workers: int = 2):
    router = make_server(workers=workers, MOCK_PROVIDER_KEY="k")
    mock = make_mock("openai", latency_ms=2000)  # every call of a burst is in flight at once
    router.mock = mock
    c = router.client
    c.post("/api/models", json=model_body("m1")).raise_for_status()
    endpoint = {"url": mock.operation_url, "apiKeyEnv": "MOCK_PROVIDER_KEY"}
    c.post("/api/models/m1/endpoints", json=endpoint).raise_for_status()
    r = c.post(f"/api/workspaces/{workspace}/config", json={"budgetLimits": limits})
    assert r.status_code == 201, r.text
    router.wait_for_config()
    within_one_minute(20)  # a burst must fall inside one minute
    return router


def test_requests_per_minute_admit_exactly_the_limit_over_two_workers(make_server, make_mock):
    router = _router(make_server, make_mock, {"requestsPerMinute": 50}, "ws-r")
    responses = asyncio.run(fire(router, "ws-r", 200))
    codes = [r.status_code for r in responses]
    assert codes.count(200) == 50 and codes.count(429) == 150
    refused = next(r for r in responses if r.status_code == 429)
    error = refused.json()["error"]
    assert error["type"] == "workspace_rate_limited" and "requestsPerMinute" in error["message"]
    assert error["details"]["limit"] == "requestsPerMinute" and error["details"]["value"] == 50
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    # Another workspace is not held to it.
    other = asyncio.run(fire(router, "ws-other", 3))
    assert [r.status_code for r in other] == [200] * 3


def test_tokens_per_minute_reserve_the_estimate_and_count_what_was_used(make_server, make_mock):
    limit = 200
    router = _router(make_server, make_mock, {"tokensPerMinute": limit}, "ws-t")
    burst = asyncio.run(fire(router, "ws-t", 40))
    served = [r for r in burst if r.status_code == 200]
    refused = [r for r in burst if r.status_code != 200]
    assert {r.status_code for r in refused} == {429}
    details = refused[0].json()["error"]["details"]
    assert details["limit"] == "tokensPerMinute"
    estimate = details["estimatedTokens"]
    # All in flight at once: each holds its estimate; no more than the minute holds.
    assert len(served) == limit // estimate
    used = [r.json()["usage"]["total_tokens"] for r in served]
    assert all(u < estimate for u in used)

    # Once they end, the minute counts what they used: the room comes back.
    router.mock.behave(latencyMs=0)
    time.sleep(0.5)
    headers = {**router.auth(router.admin_key), "X-Workspace-Id": "ws-t"}
    total, more = sum(used), 0
    for _ in range(limit):
        r = httpx.post(f"{router.url}/v1/chat/completions", json=CALL, headers=headers)
        if r.status_code != 200:
            assert r.status_code == 429
            break
        more += 1
        total += r.json()["usage"]["total_tokens"]
        time.sleep(0.2)  # its correction reaches the store (a 100 ms beat)
    assert more >= 1 and total + estimate > limit >= total


def test_calls_admitted_while_the_store_was_away_reach_it_after(tmp_path, make_mock):
    """Each worker counts a workspace's calls on its own while Redis is down;
    when it is back, those calls count against the minute for everyone."""
    store = RedisServer(tmp_path, persistent=True).start()
    mock = make_mock("openai")
    env = {"REDIS_URL": store.url, "MODEL_ROUTER_REDIS_NAMESPACE": "ws", "MOCK_PROVIDER_KEY": "k"}
    router = Server(env, tmp_path).start()
    try:
        c = router.client
        c.post("/api/models", json=model_body("m1")).raise_for_status()
        endpoint = {"url": mock.operation_url, "apiKeyEnv": "MOCK_PROVIDER_KEY"}
        c.post("/api/models/m1/endpoints", json=endpoint).raise_for_status()
        limits = {"budgetLimits": {"requestsPerMinute": 10_000}}
        c.post("/api/workspaces/ws-o/config", json=limits).raise_for_status()
        router.wait_for_config()
        headers = {**router.auth(router.admin_key), "X-Workspace-Id": "ws-o"}

        def call() -> int:
            url = f"{router.url}/v1/chat/completions"
            return httpx.post(url, json=CALL, headers=headers, timeout=10).status_code

        assert [call() for _ in range(3)] == [200] * 3  # the key is cached from here
        store.stop()
        assert [call() for _ in range(30)] == [200] * 30
        store.start()
        time.sleep(1.5)  # a few beats
        counters = store.client().scan_iter("{ws}:counter:rl:ws:ws-o:*")
        counted = sum(int(store.client().get(k)) for k in counters)
        # The 3 before the outage (a lease taken at once), and the 30 during it.
        assert 3 + 30 <= counted <= LEASE + 30
    finally:
        router.close()
        store.stop()


def test_a_call_no_minute_can_hold_is_a_400_and_takes_no_call_slot(make_server, make_mock):
    limits = {"requestsPerMinute": 2, "tokensPerMinute": 200}
    # One worker: with two, one may hold both of the minute's calls in its lease.
    router = _router(make_server, make_mock, limits, "ws-n", workers=1)
    router.mock.behave(latencyMs=0)
    headers = {**router.auth(router.admin_key), "X-Workspace-Id": "ws-n"}

    def call(body: dict) -> httpx.Response:
        return httpx.post(f"{router.url}/v1/chat/completions", json=body, headers=headers)

    # No max_tokens: the estimate is the prompt plus the model's own limit.
    unbounded = {k: v for k, v in CALL.items() if k != "max_tokens"}
    for _ in range(3):
        r = call(unbounded)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == "max_tokens" and "lower max_tokens" in error["message"]
        assert "retry-after" not in r.headers
    long_prompt = {**CALL, "messages": [{"role": "user", "content": "x" * 2000}]}
    r = call(long_prompt)
    assert r.status_code == 400 and "shorten the prompt" in r.json()["error"]["message"]
    # None of those took one of the minute's 2 calls.
    assert [call(CALL).status_code for _ in range(3)] == [200, 200, 429]
