"""Routing rules, agent preferences and workspace configs over HTTP."""

from __future__ import annotations

from conftest import model_body, rule_body


def _models(c, *ids):
    for m in ids:
        assert c.post("/api/models", json=model_body(m)).status_code == 201


def test_rule_crud_as_the_spec_shows(server):
    c = server.client
    _models(c, "claude-3-sonnet", "gpt-4")
    created = c.post("/api/routing/rules", json=rule_body("claude-3-sonnet", "gpt-4"))
    assert created.status_code == 201
    rule = created.json()
    assert rule["id"].startswith("rule-") and rule["priority"] == 100 and rule["enabled"]
    assert rule["targetModels"][0] == {
        "modelId": "claude-3-sonnet",
        "weight": 0.5,
        "fallbackOrder": 1,
        "role": "primary",
    }
    assert c.get(f"/api/routing/rules/{rule['id']}").json() == rule

    patched = c.patch(f"/api/routing/rules/{rule['id']}", json={"priority": 5, "enabled": False})
    assert patched.status_code == 200
    assert (patched.json()["priority"], patched.json()["enabled"]) == (5, False)
    assert patched.json()["name"] == rule["name"]  # untouched fields stay

    deleted = c.delete(f"/api/routing/rules/{rule['id']}")
    assert deleted.status_code == 200 and deleted.json() == {"id": rule["id"], "deleted": True}
    assert c.get(f"/api/routing/rules/{rule['id']}").status_code == 404
    assert c.delete(f"/api/routing/rules/{rule['id']}").status_code == 404
    assert c.patch(f"/api/routing/rules/{rule['id']}", json={"priority": 1}).status_code == 404


def test_rules_list_in_evaluation_order(server):
    c = server.client
    _models(c, "m")
    for name, priority in (("low", 1), ("high-old", 9), ("high-new", 9)):
        c.post("/api/routing/rules", json=rule_body("m", name=name, priority=priority, id=name))
    listed = c.get("/api/routing/rules").json()
    assert [r["id"] for r in listed["data"]] == ["high-old", "high-new", "low"]
    assert listed["total"] == 3


def test_rule_validation(server):
    c = server.client
    _models(c, "m")
    cases = {
        "targetModels[1].modelId": rule_body("m", "unknown-model"),
        "trafficSplit": rule_body("m", trafficSplit={"primary": 70, "canary": 20}),
        "condition.contentLength": rule_body(
            "m", condition={"contentLength": {"min": 10, "max": 5}}
        ),
        "targetModels[0].weight": rule_body("m", targetModels=[{"modelId": "m", "weight": -1}]),
        "targetModels": rule_body("m", targetModels=[]),
        "name": {k: v for k, v in rule_body("m").items() if k != "name"},
    }
    for field, body in cases.items():
        r = c.post("/api/routing/rules", json=body)
        assert r.status_code == 400, (field, r.text)
        assert r.json()["error"]["details"]["field"] == field, r.text
    assert c.get("/api/routing/rules").json()["total"] == 0

    rule = c.post("/api/routing/rules", json=rule_body("m")).json()
    bad = c.patch(f"/api/routing/rules/{rule['id']}", json={"targetModels": [{"modelId": "nope"}]})
    assert bad.status_code == 400
    assert c.get(f"/api/routing/rules/{rule['id']}").json() == rule
    assert (
        c.post("/api/routing/rules", json={**rule_body("m"), "id": rule["id"]}).status_code == 409
    )


def test_agent_preferences_set_and_get(server):
    c = server.client
    _models(c, "gpt-4", "claude-3-sonnet", "gpt-3.5-turbo")
    body = {
        "preferredModels": ["gpt-4", "claude-3-sonnet"],
        "fallbackModels": ["gpt-3.5-turbo"],
        "requiredCapabilities": ["text-generation"],
        "performanceRequirements": {
            "maxLatency": 5000,
            "minSuccessRate": 0.95,
            "maxCostPerToken": 0.01,
        },
    }
    first = c.post("/api/agents/creative/preferences", json=body)
    assert first.status_code == 201
    again = c.post("/api/agents/creative/preferences", json={**body, "fallbackModels": []})
    assert again.status_code == 200
    got = c.get("/api/agents/creative/preferences").json()
    assert got["agentType"] == "creative" and got["fallbackModels"] == []
    assert got["performanceRequirements"] == body["performanceRequirements"]
    assert c.get("/api/agents/unknown/preferences").status_code == 404
    bad = c.post("/api/agents/creative/preferences", json={**body, "preferredModels": ["ghost"]})
    assert bad.status_code == 400
    assert bad.json()["error"]["details"]["field"] == "preferredModels[0]"
    rate = {**body, "performanceRequirements": {"minSuccessRate": 2}}
    assert c.post("/api/agents/creative/preferences", json=rate).status_code == 400
    assert c.get("/api/agents/creative/preferences").json() == got


def test_workspace_config_set_and_get(server):
    c = server.client
    body = {
        "modelRestrictions": ["gpt-4", "claude-3-sonnet"],
        "budgetLimits": {"daily": 100, "weekly": 500, "monthly": 2000},
        "qualityRequirements": {"minSuccessRate": 0.95, "maxLatency": 5000},
        "complianceRequirements": ["gdpr", "ccpa", "hipaa"],
    }
    created = c.post("/api/workspaces/ws-marketing-001/config", json=body)
    assert created.status_code == 201
    got = c.get("/api/workspaces/ws-marketing-001/config").json()
    assert {k: got[k] for k in body} == body and got["workspaceId"] == "ws-marketing-001"
    assert c.post("/api/workspaces/ws-marketing-001/config", json=body).status_code == 200
    assert c.get("/api/workspaces/ws-unknown/config").status_code == 404
    bad = c.post("/api/workspaces/ws-1/config", json={"budgetLimits": {"daily": -5}})
    assert (
        bad.status_code == 400 and bad.json()["error"]["details"]["field"] == "budgetLimits.daily"
    )
    assert c.post("/api/workspaces/bad%20id/config", json=body).status_code == 400


def test_a_split_that_cannot_apply_is_refused_by_name(server):
    c = server.client
    _models(c, "a", "b")
    one_target = rule_body("a", trafficSplit={"primary": 80, "canary": 20})
    all_canary = rule_body(
        "a",
        "b",
        targetModels=[
            {"modelId": "a", "role": "canary"},
            {"modelId": "b", "role": "canary"},
        ],
    )
    canary_without_split = rule_body(
        "a", "b", targetModels=[{"modelId": "a"}, {"modelId": "b", "role": "canary"}]
    )
    del canary_without_split["trafficSplit"]
    for field, body in (
        ("trafficSplit", one_target),
        ("targetModels", all_canary),
        ("trafficSplit", canary_without_split),
    ):
        r = c.post("/api/routing/rules", json=body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["details"]["field"] == field, r.text
    # The spec's rule as written (no roles) is accepted: its split applies by fallbackOrder.
    assert c.post("/api/routing/rules", json=rule_body("a", "b")).status_code == 201
