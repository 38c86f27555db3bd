"""The routing API on a real server: decisions, reasons, budgets, propagation."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import httpx

from conftest import model_body, rule_body
from model_router.engine.spend import counter_name, period_keys
from model_router.settings import Settings
from model_router.store import open_store

SPEC_TEST = {
    "agentType": "creative",
    "workspaceId": "ws-marketing-001",
    "requestType": "completion",
    "prompt": "Test prompt",
}


def _setup(c) -> None:
    for m, compliance in (
        ("claude-3-sonnet", ["gdpr", "hipaa"]),
        ("gpt-4", ["gdpr"]),
        ("gpt-3.5-turbo", ["gdpr", "hipaa"]),
    ):
        body = model_body(
            m, compliance=compliance, pricing={"inputPer1k": 0.01, "outputPer1k": 0.03}
        )
        assert c.post("/api/models", json=body).status_code == 201
        c.post(
            f"/api/models/{m}/endpoints",
            json={"url": f"http://127.0.0.1:9/{m}/v1/chat/completions", "id": f"{m}-ep"},
        )


def test_the_spec_example_follows_the_matching_rule(server):
    c = server.client
    _setup(c)
    rule = c.post(
        "/api/routing/rules",
        json=rule_body(
            "claude-3-sonnet",
            "gpt-4",
            condition={"agentType": ["creative"], "requestType": ["completion", "chat"]},
        ),
    ).json()
    server.wait_for_config()
    r = c.post("/api/routing/test", json=SPEC_TEST)
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["source"] == "rule" and d["rule"] == {"id": rule["id"], "name": rule["name"]}
    assert {x["modelId"] for x in d["candidates"]} == {"claude-3-sonnet", "gpt-4"}
    assert d["candidates"][0]["reason"].startswith("weighted pick")
    assert d["candidates"][0]["endpoints"] == [d["candidates"][0]["modelId"] + "-ep"]
    assert d["excluded"] == [
        {"modelId": "gpt-3.5-turbo", "reason": f"not targeted by rule {rule['id']}"}
    ]
    assert d["outcome"] == {"status": 200, "type": None, "message": None, "details": None}
    assert (d["requestType"], d["contentLength"]) == ("completion", len("Test prompt"))

    # Too long for the rule's contentLength: no rule, so the default ranking.
    c.patch(f"/api/routing/rules/{rule['id']}", json={"condition": {"contentLength": {"max": 5}}})
    server.wait_for_config()
    d = c.post("/api/routing/test", json=SPEC_TEST).json()
    assert d["source"] == "default" and len(d["candidates"]) == 3


def test_workspace_restrictions_and_compliance_are_explained(server):
    c = server.client
    _setup(c)
    c.post(
        "/api/workspaces/ws-1/config",
        json={
            "modelRestrictions": ["gpt-4", "claude-3-sonnet"],
            "complianceRequirements": ["hipaa"],
        },
    )
    server.wait_for_config()
    d = c.post("/api/routing/test", json={**SPEC_TEST, "workspaceId": "ws-1"}).json()
    assert [x["modelId"] for x in d["candidates"]] == ["claude-3-sonnet"]
    reasons = {x["modelId"]: x["reason"] for x in d["excluded"]}
    assert reasons == {
        "gpt-3.5-turbo": "restricted by workspace ws-1",
        "gpt-4": "missing compliance hipaa",
    }


def test_preferences_and_agent_models(server):
    c = server.client
    _setup(c)
    c.post(
        "/api/agents/research/preferences",
        json={"preferredModels": ["gpt-4"], "fallbackModels": ["gpt-3.5-turbo"]},
    )
    server.wait_for_config()
    r = c.get("/api/agents/research/models")
    assert r.status_code == 200
    d = r.json()
    assert d["source"] == "preferences"
    assert [(x["modelId"], x["reason"]) for x in d["candidates"]] == [
        ("gpt-4", "preferred model #1"),
        ("gpt-3.5-turbo", "fallback model #1"),
    ]
    c.patch("/api/models/gpt-4/status", json={"status": "maintenance"})
    server.wait_for_config()
    d = c.get("/api/agents/research/models").json()
    assert [x["modelId"] for x in d["candidates"]] == ["gpt-3.5-turbo"]
    assert {"modelId": "gpt-4", "reason": "status maintenance"} in d["excluded"]


def test_requested_model_and_unknown_model(server):
    c = server.client
    _setup(c)
    server.wait_for_config()
    d = c.post("/api/routing/test", json={**SPEC_TEST, "model": "gpt-4"}).json()
    assert d["source"] == "requested" and [x["modelId"] for x in d["candidates"]] == ["gpt-4"]
    d = c.post("/api/routing/test", json={**SPEC_TEST, "model": "gpt-5"}).json()
    assert d["outcome"]["status"] == 404 and d["outcome"]["type"] == "unknown_model"


def test_a_spent_budget_stops_the_workspace_across_workers(make_server, backend):
    server = make_server(workers=2)
    c = server.client
    _setup(c)
    c.post("/api/workspaces/ws-1/config", json={"budgetLimits": {"daily": 100, "monthly": 2000}})
    server.wait_for_config()
    assert (
        c.post("/api/routing/test", json={**SPEC_TEST, "workspaceId": "ws-1"}).json()["outcome"][
            "status"
        ]
        == 200
    )

    # Another replica spent $100.42 today: its counters are in the shared store.
    async def spend() -> None:
        store = open_store(Settings.from_env(server.env))
        today = period_keys(datetime.now(UTC))
        await store.add_counters(
            {counter_name("ws", "ws-1", "d", today["d"]): 100_420_000_000}, 60_000
        )
        await store.close()

    asyncio.run(spend())
    time.sleep(1.5)  # one spend flush
    for _ in range(6):  # fresh connections reach both workers
        d = httpx.post(
            f"{server.url}/api/routing/test",
            json={**SPEC_TEST, "workspaceId": "ws-1"},
            headers={**server.auth(server.admin_key), "Connection": "close"},
        ).json()
        assert d["outcome"]["status"] == 402, d
        assert d["outcome"]["message"] == "over daily budget 100.00 (spent 100.42)"
        assert d["outcome"]["details"] == {"period": "daily", "limit": 100.0, "spent": 100.42}
        assert d["candidates"] == []
    other = c.post("/api/routing/test", json={**SPEC_TEST, "workspaceId": "ws-2"}).json()
    assert other["outcome"]["status"] == 200


def test_rule_changes_reach_every_worker_within_a_second(make_server):
    server = make_server(workers=2)
    c = server.client
    _setup(c)
    for target in ("gpt-4", "gpt-3.5-turbo", "claude-3-sonnet"):
        rule = c.post(
            "/api/routing/rules",
            json=rule_body(target, priority=1000, condition={"agentType": ["creative"]}),
        ).json()
        time.sleep(1.0)
        for _ in range(6):
            d = httpx.post(
                f"{server.url}/api/routing/test",
                json=SPEC_TEST,
                headers={**server.auth(server.admin_key), "Connection": "close"},
            ).json()
            assert d["rule"]["id"] == rule["id"] and d["candidates"][0]["modelId"] == target
        c.delete(f"/api/routing/rules/{rule['id']}")


def test_scoped_keys_decide_for_their_workspace_only(server):
    c = server.client
    _setup(c)
    key = c.post("/api/keys", json={"role": "agent", "workspaceId": "ws-1"}).json()["key"]
    agent = httpx.Client(base_url=server.url, headers=server.auth(key))
    assert agent.post("/api/routing/test", json={"agentType": "creative"}).status_code == 200
    assert (
        agent.post("/api/routing/test", json={**SPEC_TEST, "workspaceId": "ws-2"}).status_code
        == 403
    )
    assert agent.get("/api/agents/creative/models?workspaceId=ws-2").status_code == 403
    viewer = c.post("/api/keys", json={"role": "viewer"}).json()["key"]
    assert (
        httpx.post(
            f"{server.url}/api/routing/test", json=SPEC_TEST, headers=server.auth(viewer)
        ).status_code
        == 403
    )
