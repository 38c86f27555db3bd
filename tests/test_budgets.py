"""Budgets hold exactly under concurrency: 400 requests at once against a
budget of 100 requests' cost, on one instance (2 workers) and on two replicas
sharing one Redis. Nothing is served past the limit, and the spend the store
records is the spend served."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import httpx
import pytest

from conftest import model_body
from model_router.engine.spend import TTL_MS, counter_name, period_keys
from model_router.settings import Settings
from model_router.store import open_store
from model_router.store.redis import RedisStore

PRICING = {"inputPer1k": 0.01, "outputPer1k": 0.03}
ONE_REQUEST = 1 * 0.01 / 1000 + 5 * 0.03 / 1000  # the mock: 1 prompt + 5 completion tokens
BUDGET = round(100 * ONE_REQUEST, 9)
REQUEST = {
    "model": "m1",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 5,
}


@pytest.fixture(params=["redis"])
def backend(request):
    return request.param


async def fire(routers: list, n: int) -> list[httpx.Response]:
    """n requests at once, spread over the routers."""
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        def post(router):
            headers = {**router.auth(router.admin_key), "X-Workspace-Id": "ws-b"}
            return client.post(f"{router.url}/v1/chat/completions", json=REQUEST, headers=headers)

        return await asyncio.gather(*(post(routers[i % len(routers)]) for i in range(n)))


@pytest.mark.parametrize("replicas", [1, 2], ids=["one-instance", "two-replicas"])
def test_400_concurrent_requests_never_overspend_a_100_request_budget(
    make_server, make_mock, redis_url, replicas
):
    first = make_server(workers=2, MOCK_PROVIDER_KEY="k")
    namespace = first.env["MODEL_ROUTER_REDIS_NAMESPACE"]
    routers = [first] + [
        make_server(
            workers=2,
            MOCK_PROVIDER_KEY="k",
            MODEL_ROUTER_REDIS_NAMESPACE=namespace,
        )
        for _ in range(replicas - 1)
    ]
    mock = make_mock("openai", latency_ms=300)  # every request is in flight at once
    c = first.client
    assert c.post("/api/models", json=model_body("m1", pricing=PRICING)).status_code == 201
    endpoint = {"url": mock.operation_url, "apiKeyEnv": "MOCK_PROVIDER_KEY"}
    assert c.post("/api/models/m1/endpoints", json=endpoint).status_code == 201
    r = c.post("/api/workspaces/ws-b/config", json={"budgetLimits": {"daily": BUDGET}})
    assert r.status_code in (200, 201)
    for router in routers:
        router.wait_for_config()

    responses = asyncio.run(fire(routers, 400))

    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 402}, sorted(set(statuses))
    served = [r.json() for r in responses if r.status_code == 200]
    served_cost = sum(
        u["prompt_tokens"] * 0.01 / 1000 + u["completion_tokens"] * 0.03 / 1000
        for u in (s["usage"] for s in served)
    )
    assert served_cost <= BUDGET + 1e-12, f"{len(served)} served: ${served_cost} > ${BUDGET}"
    # Reservations hold each request's worst case (about twice its cost here):
    # a fair share of the budget is still served at once.
    assert len(served) >= 40, f"only {len(served)} served"

    async def recorded() -> tuple[int, dict[str, int]]:
        """The workspace's spend today, and each period's counter's time to live."""
        settings = Settings.from_env(
            {"REDIS_URL": redis_url, "MODEL_ROUTER_REDIS_NAMESPACE": namespace}
        )
        store = open_store(settings)
        assert isinstance(store, RedisStore)
        keys = period_keys(datetime.now(UTC))
        names = {p: counter_name("ws", "ws-b", p, k) for p, k in keys.items()}
        lives = {p: await store.client.pttl(store._counter_key(n)) for p, n in names.items()}
        total = (await store.add_counters({names["d"]: 0}, 60_000))[names["d"]]
        await store.close()
        return total, lives

    time.sleep(1.5)  # one spend flush
    total, lives = asyncio.run(recorded())
    assert total == pytest.approx(round(served_cost * 1e9), abs=len(served))
    # The flush writes every period in one call; each counter keeps its own lifetime.
    for period, ttl in TTL_MS.items():
        assert ttl - 60_000 < lives[period] <= ttl, (period, lives)
