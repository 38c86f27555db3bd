"""The audit trail of admin writes, against a real server on each store."""

from __future__ import annotations

import time
from typing import get_args

import httpx

from conftest import model_body
from model_router import types as t
from model_router.catalog import LABELS

PROVIDER_KEY = "sk-provider-" + "s3cret" * 4


def _key(server, role: str, workspace: str | None = None) -> tuple[str, str]:
    body: dict[str, str] = {"role": role}
    if workspace:
        body["workspaceId"] = workspace
    r = server.client.post("/api/keys", json=body)
    assert r.status_code == 201, r.text
    return r.json()["key"], r.json()["id"]


def test_every_admin_write_is_recorded_with_who_what_before_after_and_version(make_server):
    server = make_server(
        LOG_LEVEL="info", MODEL_ROUTER_AUDIT_MAX_ENTRIES="8", AUDIT_PROVIDER_KEY=PROVIDER_KEY
    )
    admin = server.client
    started = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 1)) + "Z"
    # A provider key pasted where it does not belong is still never shown.
    assert admin.post("/api/models", json=model_body("m1", id="m1")).status_code == 201
    endpoint = {"url": "http://127.0.0.1:9/v1/chat/completions", "apiKeyEnv": "AUDIT_PROVIDER_KEY"}
    assert admin.post("/api/models/m1/endpoints", json=endpoint).status_code == 201
    changed = admin.patch("/api/models/m1/status", json={"status": "maintenance"})
    assert changed.status_code == 200
    described = admin.post("/api/models", json=model_body("m2", id="m2", description=PROVIDER_KEY))
    assert described.status_code == 201
    operator_key, operator_id = _key(server, "operator")
    operator = httpx.Client(base_url=server.url, headers=server.auth(operator_key), timeout=10)
    health = {"status": "unhealthy", "errorRate": 0.5}
    assert operator.post("/api/models/m1/health", json=health).status_code == 200
    version = admin.get("/api/config/export").json()["configVersion"]

    page = admin.get("/api/audit").json()
    entries = page["data"]
    assert [(e["method"], e["path"]) for e in entries] == [
        ("POST", "/api/models/m1/health"),
        ("POST", "/api/keys"),
        ("POST", "/api/models"),
        ("PATCH", "/api/models/m1/status"),
        ("POST", "/api/models/m1/endpoints"),
        ("POST", "/api/models"),
    ]
    newest = entries[0]
    assert newest["keyId"] == operator_id and newest["role"] == "operator"
    assert newest["resourceType"] == "health" and newest["resourceId"] == "m1"
    assert newest["configVersion"] == version
    assert newest["changes"][0]["before"] is None
    assert newest["changes"][0]["after"]["status"] == "unhealthy"
    status = entries[3]
    assert status["keyId"] == "bootstrap-admin" and status["resourceId"] == "m1"
    assert status["changes"][0]["before"]["status"] == "active"
    assert status["changes"][0]["after"]["status"] == "maintenance"
    assert [e["configVersion"] for e in entries] == sorted(
        {e["configVersion"] for e in entries}, reverse=True
    )
    # No secret in any entry: not the key's hash, not a provider key.
    key_entry = entries[1]
    assert key_entry["resourceType"] == "keys" and key_entry["resourceId"] == operator_id
    assert "secretHash" not in str(key_entry) and operator_key not in str(page)
    assert PROVIDER_KEY not in str(page) and "[REDACTED]" in str(entries[2])

    # Filters and paging.
    only_keys = admin.get("/api/audit", params={"resourceType": "keys"}).json()["data"]
    assert [e["resourceId"] for e in only_keys] == [operator_id]
    by_operator = admin.get("/api/audit", params={"keyId": operator_id}).json()["data"]
    assert [e["path"] for e in by_operator] == ["/api/models/m1/health"]
    first = admin.get("/api/audit", params={"limit": 4}).json()
    second = admin.get("/api/audit", params={"limit": 4, "before": first["nextBefore"]}).json()
    assert first["data"] + second["data"] == entries and second["nextBefore"] is None
    assert len(admin.get("/api/audit", params={"since": started}).json()["data"]) == 6
    future = admin.get("/api/audit", params={"since": "2999-01-01T00:00:00Z"}).json()
    assert future["data"] == []
    bad = admin.get("/api/audit", params={"since": "yesterday"})
    assert bad.status_code == 400 and bad.json()["error"]["details"]["field"] == "since"
    assert admin.get("/api/audit", params={"resourceType": "bogus"}).status_code == 400

    # Bounded: the oldest are pruned past MODEL_ROUTER_AUDIT_MAX_ENTRIES.
    for i in range(3):
        admin.post("/api/models", json=model_body(f"n{i}", id=f"n{i}")).raise_for_status()
    kept = admin.get("/api/audit").json()["data"]
    assert len(kept) == 8 and kept[-1]["path"] == "/api/models/m1/endpoints"

    # A refused write records nothing; reads are not writes.
    assert admin.post("/api/models", json=model_body("m1", id="m1")).status_code == 409
    assert admin.get("/api/audit").json()["data"] == kept

    # Each admin write has a log line: who, what, the version it produced.
    log = server.log_path.read_text()
    assert f"admin write by {operator_id}: POST /api/models/m1/health" in log
    assert f"config version {version}" in log
    assert PROVIDER_KEY not in log


def test_only_unscoped_admins_read_the_audit_trail(server):
    assert server.client.get("/api/audit").status_code == 200
    for role, workspace in [
        ("operator", None),
        ("agent", None),
        ("viewer", None),
        ("admin", "ws-a"),
    ]:
        key, _ = _key(server, role, workspace)
        r = httpx.get(f"{server.url}/api/audit", headers=server.auth(key))
        assert r.status_code == 403, (role, workspace)
    assert httpx.get(f"{server.url}/api/audit").status_code == 401


def test_a_config_import_is_one_entry_listing_what_it_replaced(server):
    admin = server.client
    admin.post("/api/models", json=model_body("old", id="old")).raise_for_status()
    admin.post("/api/models", json=model_body("same", id="same")).raise_for_status()
    same = admin.get("/api/models/same").json()
    config = {"models": [{**model_body("new"), "id": "new"}, same]}
    r = admin.post("/api/config/import", params={"mode": "replace"}, json={"config": config})
    assert r.status_code == 200, r.text
    entry = admin.get("/api/audit").json()["data"][0]
    assert entry["path"] == "/api/config/import" and entry["resourceId"] is None
    changes = {(c["resourceType"], c["resourceId"]): c for c in entry["changes"]}
    # What the replace removed, with what it was; what it created; not what it kept.
    assert set(changes) == {("models", "old"), ("models", "new")}
    assert changes[("models", "old")]["before"]["id"] == "old"
    assert changes[("models", "old")]["after"] is None
    assert changes[("models", "new")]["before"] is None
    assert changes[("models", "new")]["after"]["id"] == "new"
    assert entry["configVersion"] == admin.get("/api/config/export").json()["configVersion"]
    # The same import again changes nothing, and adds nothing to the trail.
    exported = admin.get("/api/config/export").json()
    again = admin.post("/api/config/import", params={"mode": "replace"}, json=exported)
    assert again.status_code == 200, again.text
    assert admin.get("/api/audit").json()["data"][0]["seq"] == entry["seq"]


def test_entries_are_bounded_in_bytes_with_a_truncation_marker(server):
    admin = server.client
    big = model_body("big", id="big", parameters={"notes": "x" * 20_000})
    admin.post("/api/models", json=big).raise_for_status()
    (change,) = admin.get("/api/audit").json()["data"][0]["changes"]
    assert change["before"] is None
    assert change["after"]["truncated"] is True and change["after"]["bytes"] > 20_000
    # A replace import of 60 models of ~1.5 KiB each: listed up to 32 KiB, the rest counted.
    models = [model_body(f"m{i}", id=f"m{i}", parameters={"notes": "y" * 1500}) for i in range(60)]
    replace = {"mode": "replace"}
    r = admin.post("/api/config/import", params=replace, json={"config": {"models": models}})
    assert r.status_code == 200, r.text
    raw = admin.get("/api/audit", params={"limit": 1}).content
    entry = admin.get("/api/audit").json()["data"][0]
    assert len(raw) < 40_000
    assert len(entry["changes"]) + entry["omittedChanges"] == 61  # 60 created, big deleted
    assert entry["omittedChanges"] > 0


def test_the_audit_filter_names_every_kind_the_catalog_writes():
    assert set(get_args(t.AuditedKind)) == set(LABELS)
