"""Config export/import over HTTP and through the CLI."""

from __future__ import annotations

import json
import os
import subprocess

from conftest import ROUTER, model_body, rule_body


def _populate(c) -> None:
    for m in ("gpt-4", "claude-3-sonnet"):
        assert c.post("/api/models", json=model_body(m)).status_code == 201
    c.post(
        "/api/models/gpt-4/endpoints",
        json={"url": "https://api.openai.com/v1/chat/completions", "id": "ep-1"},
    )
    c.post("/api/routing/rules", json=rule_body("gpt-4", "claude-3-sonnet", id="r1"))
    c.post("/api/agents/creative/preferences", json={"preferredModels": ["gpt-4"]})
    c.post("/api/workspaces/ws-1/config", json={"budgetLimits": {"daily": 100}})
    assert c.post("/api/keys", json={"role": "agent"}).status_code == 201


def test_export_holds_all_config_and_no_secret(server):
    c = server.client
    _populate(c)
    exported = c.get("/api/config/export").json()
    config = exported["config"]
    assert [m["id"] for m in config["models"]] == ["claude-3-sonnet", "gpt-4"]
    assert [e["id"] for e in config["endpoints"]] == ["ep-1"]
    assert [r["id"] for r in config["routingRules"]] == ["r1"]
    assert config["agentPreferences"]["creative"]["preferredModels"] == ["gpt-4"]
    assert config["workspaceConfigs"]["ws-1"]["budgetLimits"]["daily"] == 100
    text = json.dumps(exported)
    assert "secretHash" not in text and "mr_" not in text and server.admin_key not in text
    assert exported["configVersion"] > 0


def test_roundtrip_into_an_empty_router_and_replace(make_server):
    source = make_server()
    _populate(source.client)
    exported = source.client.get("/api/config/export").json()

    target = make_server()
    dry = target.client.post("/api/config/import?dryRun=true", json=exported)
    assert dry.status_code == 200
    assert dry.json()["applied"] is False
    assert dry.json()["changes"]["models"]["created"] == ["claude-3-sonnet", "gpt-4"]
    assert target.client.get("/api/models").json()["total"] == 0  # dry run wrote nothing

    applied = target.client.post("/api/config/import", json=exported).json()
    assert applied["applied"] and applied["changes"]["routingRules"]["created"] == ["r1"]
    again = target.client.get("/api/config/export").json()
    assert again["config"] == exported["config"]
    noop = target.client.post("/api/config/import", json=exported).json()
    assert noop["applied"] is False and noop["changes"]["models"]["unchanged"] == 2

    smaller = {"config": {**exported["config"], "routingRules": [], "endpoints": []}}
    smaller["config"]["models"] = [m for m in exported["config"]["models"] if m["id"] == "gpt-4"]
    smaller["config"]["agentPreferences"] = {}
    replaced = target.client.post("/api/config/import?mode=replace", json=smaller).json()
    assert replaced["changes"]["models"]["deleted"] == ["claude-3-sonnet"]
    assert replaced["changes"]["routingRules"]["deleted"] == ["r1"]
    assert [m["id"] for m in target.client.get("/api/models").json()["data"]] == ["gpt-4"]
    assert target.client.get("/api/routing/rules").json()["total"] == 0


def test_a_bad_document_changes_nothing(server):
    c = server.client
    _populate(c)
    before = c.get("/api/config/export").json()
    bad = {
        "config": {
            "models": [model_body("new-model", id="new-model")],
            "routingRules": [
                {**rule_body("gpt-4", "ghost"), "id": "r2"},
                {**rule_body("gpt-4", trafficSplit={"primary": 50, "canary": 10}), "id": "r3"},
            ],
        }
    }
    r = c.post("/api/config/import", json=bad)
    assert r.status_code == 400
    problems = r.json()["error"]["details"]["problems"]
    assert {p["field"] for p in problems} == {
        "config.routingRules[0].targetModels[1].modelId",
        "config.routingRules[1].trafficSplit",
    }
    # replace would drop gpt-4 that a rule in the document still targets
    dangling = {"config": {"models": [], "routingRules": [{**rule_body("gpt-4"), "id": "r9"}]}}
    assert c.post("/api/config/import?mode=replace", json=dangling).status_code == 400
    assert c.post("/api/config/import?mode=overwrite", json=bad).status_code == 400
    after = c.get("/api/config/export").json()
    assert after["config"] == before["config"]
    assert after["configVersion"] == before["configVersion"]


def test_cli_export_import_and_keys(make_server, tmp_path):
    server = make_server()
    _populate(server.client)
    env = {k: v for k, v in server.env.items()}
    exported_file = tmp_path / "config.json"
    subprocess.run([ROUTER, "config", "export", str(exported_file)], env=env, check=True)
    exported = json.loads(exported_file.read_text())
    assert [m["id"] for m in exported["config"]["models"]] == ["claude-3-sonnet", "gpt-4"]

    empty_env = {
        **env,
        "MODEL_ROUTER_DATA_DIR": str(tmp_path / "other"),
        "MODEL_ROUTER_REDIS_NAMESPACE": env.get("MODEL_ROUTER_REDIS_NAMESPACE", "x") + "-other",
    }
    dry = subprocess.run(
        [ROUTER, "config", "import", str(exported_file), "--dry-run"],
        env=empty_env,
        check=True,
        capture_output=True,
    )
    assert json.loads(dry.stdout)["changes"]["models"]["created"] == ["claude-3-sonnet", "gpt-4"]
    done = subprocess.run(
        [ROUTER, "config", "import", str(exported_file)],
        env=empty_env,
        check=True,
        capture_output=True,
    )
    assert json.loads(done.stdout)["applied"] is True
    second = subprocess.run(
        [ROUTER, "config", "export"], env=empty_env, check=True, capture_output=True
    )
    assert json.loads(second.stdout)["config"] == exported["config"]

    (tmp_path / "bad.json").write_text('{"config": {"models": [{"id": 1}]}}')
    bad = subprocess.run(
        [ROUTER, "config", "import", str(tmp_path / "bad.json")], env=env, capture_output=True
    )
    assert bad.returncode != 0 and b"models" in bad.stderr

    created = subprocess.run(
        [ROUTER, "keys", "create", "--role", "operator", "--workspace", "ws-9"],
        env=env,
        check=True,
        capture_output=True,
    )
    key = json.loads(created.stdout)["key"]
    r = server.client.get("/api/workspaces/ws-9/config", headers=server.auth(key))
    assert r.status_code == 404  # authenticated, in scope, just not configured yet
    assert os.path.exists(ROUTER)
