"""Model management over HTTP, on both stores."""

from __future__ import annotations

from conftest import model_body


def test_register_get_and_list_as_the_spec_shows(server):
    c = server.client
    created = c.post("/api/models", json=model_body("gpt-4-1106-preview", name="GPT-4 Turbo"))
    assert created.status_code == 201
    model = created.json()
    assert model["id"] == "gpt-4-1106-preview"  # the version when no id is given
    assert model["capabilities"] == [{"type": "text-generation", "maxTokens": 4096}]
    assert model["createdAt"].endswith("Z")

    got = c.get("/api/models/gpt-4-1106-preview")
    assert got.status_code == 200 and got.json() == model

    assert c.post("/api/models", json=model_body("other", id="explicit-id")).json()["id"] == (
        "explicit-id"
    )


def test_duplicate_is_409_and_unknown_is_404(server):
    c = server.client
    assert c.post("/api/models", json=model_body("m1")).status_code == 201
    dup = c.post("/api/models", json=model_body("m1", name="changed"))
    assert dup.status_code == 409
    assert dup.json()["error"]["type"] == "conflict"
    assert c.get("/api/models/m1").json()["name"] == "Model m1"  # untouched
    missing = c.get("/api/models/nope")
    assert missing.status_code == 404
    assert missing.json()["error"] == {
        "type": "not_found",
        "message": "model 'nope' not found",
        "details": {"model": "nope"},
    }


def test_list_filters_and_pages(server):
    c = server.client
    c.post("/api/models", json=model_body("a", provider="openai", tags=["fast"]))
    c.post("/api/models", json=model_body("b", provider="anthropic", status="inactive"))
    c.post("/api/models", json=model_body("c", provider="openai", modelType="embedding"))
    c.post("/api/models", json=model_body("d", provider="openai", tags=["fast"]))

    def ids(query: str) -> tuple[list[str], int]:
        body = c.get(f"/api/models?{query}").json()
        return [m["id"] for m in body["data"]], body["total"]

    assert ids("") == (["a", "b", "c", "d"], 4)
    assert ids("provider=openai&status=active&modelType=chat") == (["a", "d"], 2)
    assert ids("provider=anthropic") == (["b"], 1)
    assert ids("tag=fast") == (["a", "d"], 2)
    assert ids("limit=2&offset=1") == (["b", "c"], 4)
    bad = c.get("/api/models?status=enabled")
    assert bad.status_code == 400 and bad.json()["error"]["details"]["field"] == "status"
    assert c.get("/api/models?limit=0").status_code == 400
    assert c.get("/api/models?offset=-1").status_code == 400


def test_status_update_and_batch_are_all_or_nothing(server):
    c = server.client
    for m in ("m1", "m2"):
        c.post("/api/models", json=model_body(m))
    r = c.patch("/api/models/m1/status", json={"status": "inactive"})
    assert r.status_code == 200 and r.json()["status"] == "inactive"
    assert c.patch("/api/models/zz/status", json={"status": "active"}).status_code == 404
    bad = c.patch("/api/models/m1/status", json={"status": "enabled"})
    assert bad.status_code == 400 and bad.json()["error"]["details"]["field"] == "status"

    batch = c.patch(
        "/api/models/batch/status",
        json={
            "updates": [
                {"modelId": "m1", "status": "active"},
                {"modelId": "m2", "status": "deprecated"},
            ]
        },
    )
    assert batch.status_code == 200
    assert [c.get(f"/api/models/{m}").json()["status"] for m in ("m1", "m2")] == [
        "active",
        "deprecated",
    ]
    partial = c.patch(
        "/api/models/batch/status",
        json={
            "updates": [
                {"modelId": "m1", "status": "inactive"},
                {"modelId": "ghost", "status": "active"},
            ]
        },
    )
    assert partial.status_code == 404
    assert partial.json()["error"]["details"] == {"modelId": "ghost"}
    assert c.get("/api/models/m1").json()["status"] == "active"  # nothing changed
    dup = c.patch(
        "/api/models/batch/status",
        json={
            "updates": [
                {"modelId": "m1", "status": "inactive"},
                {"modelId": "m1", "status": "active"},
            ]
        },
    )
    assert dup.status_code == 400


def test_health_post_and_get(server):
    c = server.client
    c.post("/api/models", json=model_body("m1"))
    assert c.get("/api/models/m1/health").json()["status"] == "unknown"
    body = {"status": "healthy", "responseTime": 500, "errorRate": 0.01, "availability": 99.9}
    posted = c.post("/api/models/m1/health", json=body)
    assert posted.status_code == 200
    got = c.get("/api/models/m1/health").json()
    assert {k: got[k] for k in body} == body and got["modelId"] == "m1" and got["lastChecked"]
    for field, value in (("errorRate", 1.5), ("availability", 100.1), ("responseTime", -1)):
        r = c.post("/api/models/m1/health", json={**body, field: value})
        assert r.status_code == 400 and r.json()["error"]["details"]["field"] == field
    assert c.post("/api/models/ghost/health", json=body).status_code == 404
    assert c.get("/api/models/ghost/health").status_code == 404


def test_endpoints_register_and_list(server):
    c = server.client
    c.post("/api/models", json=model_body("m1"))
    body = {
        "url": "https://api.openai.com/v1/chat/completions",
        "type": "primary",
        "weight": 1.0,
        "healthCheckUrl": "https://api.openai.com/v1/models",
        "apiKeyEnv": "OPENAI_API_KEY",
        "timeoutMs": 30000,
    }
    created = c.post("/api/models/m1/endpoints", json=body)
    assert created.status_code == 201
    endpoint = created.json()
    assert endpoint["id"].startswith("ep-") and endpoint["modelId"] == "m1"
    assert {k: endpoint[k] for k in body} == body
    second = c.post("/api/models/m1/endpoints", json={**body, "id": "backup-1", "type": "backup"})
    assert second.status_code == 201
    assert c.post("/api/models/m1/endpoints", json={**body, "id": "backup-1"}).status_code == 409
    listed = c.get("/api/models/m1/endpoints").json()
    assert listed["total"] == 2 and [e["id"] for e in listed["data"]] == [
        endpoint["id"],
        "backup-1",
    ]
    assert c.post("/api/models/ghost/endpoints", json=body).status_code == 404
    assert c.get("/api/models/ghost/endpoints").status_code == 404
    for field, value in (
        ("weight", -1),
        ("url", "ftp://x"),
        ("type", "tertiary"),
        ("timeoutMs", 0),
    ):
        r = c.post("/api/models/m1/endpoints", json={**body, field: value})
        assert r.status_code == 400 and r.json()["error"]["details"]["field"] == field
    assert c.get("/api/models/m1/endpoints").json()["total"] == 2
