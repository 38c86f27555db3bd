"""Input at the edge that used to cost memory, store space or a 500: header
ids held to the rules of body ids, JSON nested without end, a scraper
without the metrics key."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from conftest import model_body

CHAT = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(params=["sqlite"])
def backend(request):
    return request.param


def deep(levels: int) -> str:
    """JSON text of objects nested `levels` deep (no encoder would write it)."""
    return '{"a":' * levels + "1" + "}" * levels


def test_header_ids_are_checked_like_body_ids(make_server):
    router = make_server()
    auth = router.auth(router.admin_key)
    for name, value in (
        ("X-Workspace-Id", "w" * 50_000),
        ("X-Workspace-Id", "ws one"),
        ("X-Agent-Type", "a" * 65),
        ("X-User-Id", "u" * 257),
    ):
        r = httpx.post(
            f"{router.url}/v1/chat/completions", json=CHAT, headers={**auth, name: value}
        )
        assert r.status_code == 400, (name, r.text)
        error = r.json()["error"]
        assert error["param"] == name.lower() and error["details"]["field"] == name.lower()


@pytest.mark.parametrize("levels", [2_000, 100_000])
def test_json_nested_without_end_is_a_400_everywhere(make_server, levels):
    router = make_server(MODEL_ROUTER_MAX_BODY_BYTES="4000000")
    c = router.client
    assert c.post("/api/models", json=model_body("m1")).status_code == 201
    nested = deep(levels)
    # The nesting goes where each API takes a free-form value (the placeholder 0).
    bodies = {
        "/api/route": {"agentType": "a", "prompt": "hi", "metadata": {"x": 0}},
        "/v1/chat/completions": {**CHAT, "extra": 0},
        "/v1/messages": {"model": "auto", "max_tokens": 5, "messages": CHAT["messages"], "x": 0},
        "/api/config/import": {"config": {"models": [model_body("m2", parameters={"p": 0})]}},
    }
    for path, body in bodies.items():
        payload = json.dumps(body).replace(": 0", ": " + nested, 1)
        r = httpx.post(
            f"{router.url}{path}",
            content=payload,
            headers={**router.auth(router.admin_key), "content-type": "application/json"},
        )
        assert r.status_code == 400, (path, r.status_code, r.text[:200])


def test_metrics_can_require_a_key(make_server):
    key = "metrics-scraper-key-0123456789"
    router = make_server(MODEL_ROUTER_METRICS_KEY=key)
    assert httpx.get(f"{router.url}/metrics").status_code == 401
    assert httpx.get(f"{router.url}/metrics", headers=router.auth("wrong-key")).status_code == 401
    ok = httpx.get(f"{router.url}/metrics", headers=router.auth(key))
    assert ok.status_code == 200 and "model_router_" in ok.text


def test_a_body_that_is_not_declared_json_is_415(make_server):
    router = make_server()
    auth = router.auth(router.admin_key)
    body = json.dumps(model_body("m1"))
    for path in ("/api/models", "/v1/chat/completions"):
        for declared in ("application/x-www-form-urlencoded", "text/plain", "multipart/form-data"):
            r = httpx.post(
                f"{router.url}{path}", content=body, headers={**auth, "content-type": declared}
            )
            assert r.status_code == 415, (path, declared, r.text)
    ok = httpx.post(
        f"{router.url}/api/models",
        content=body,
        headers={**auth, "content-type": "application/json; charset=utf-8"},
    )
    assert ok.status_code == 201, ok.text


def test_requests_the_router_refuses_are_counted_and_logged_but_not_floods(make_server):
    router = make_server(LOG_LEVEL="info")
    started = time.monotonic()
    with httpx.Client(headers=router.auth("mr_nope_wrongsecret")) as flood:
        for _ in range(60):
            flood.get(f"{router.url}/api/models")
    seconds = time.monotonic() - started
    assert router.client.get("/api/nothing-here").status_code == 404
    time.sleep(1.5)  # the metrics flush
    text = httpx.get(f"{router.url}/metrics").text
    # Past 20 failed authentications a minute, the address is answered 429.
    assert 'model_router_rejected_total{status="401",type="unauthorized"} 20.0' in text
    refused = 'status="429",type="too_many_failed_authentications"} 40.0'
    assert refused in text
    assert 'model_router_rejected_total{status="404",type="not_found"} 1.0' in text
    log = router.log_path.read_text()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    rejected = [entry for entry in lines if entry["message"].startswith("Request rejected")]
    assert rejected and all(entry["level"] == "warning" for entry in rejected)
    # At most 10 lines a second (and the 404's), the rest summed up in one
    # line. The seconds are the clock's: a burst of d seconds touches up to
    # int(d) + 2 of them (one of 0.2 s across a second's turn got 13 lines).
    assert len(rejected) <= 10 * (int(seconds) + 2) + 1 < 61, (len(rejected), seconds)
    assert "mr_nope_wrongsecret" not in log


def test_times_past_the_years_iso_can_write_are_400_naming_the_field(make_server):
    """Times that parse but leave years 1..9999 once moved to UTC, and audit
    seqs past SQLite's integers, are a 400, not a 500."""
    router = make_server()
    c = router.client
    c.post("/api/models", json=model_body("m1")).raise_for_status()
    health = {"status": "degraded", "expiresAt": "9999-12-31T23:59:59-01:00"}
    r = c.post("/api/models/m1/health", json=health)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["details"] == {"in": "body", "field": "expiresAt"}
    for params, field in (
        ({"since": "0001-01-01T00:00:00+01:00"}, "since"),
        ({"before": "99999999999999999999999"}, "before"),
        ({"before": str(2**63)}, "before"),
    ):
        r = c.get("/api/audit", params=params)
        assert r.status_code == 400, (params, r.text)
        assert r.json()["error"]["details"]["field"] == field
    r = c.get("/api/analytics/models", params={"from": "0001-01-01T00:00:00+01:00"})
    assert r.status_code == 400 and r.json()["error"]["details"]["field"] == "from"
    # The bounds themselves are fine.
    assert c.get("/api/audit", params={"since": "0001-01-01T00:00:00Z"}).status_code == 200
    assert c.get("/api/audit", params={"before": str(2**62)}).status_code == 200
    late = {**health, "expiresAt": "9999-12-31T23:59:59Z"}
    assert c.post("/api/models/m1/health", json=late).json()["expiresAt"].startswith("9999-12-31")
