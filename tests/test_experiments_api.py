"""Canaries and experiments over HTTP: a router of two workers on SQLite and
on Redis, two mock providers whose errors and latency are set while it runs.
A bad canary is rolled back by the controller, a good one promoted; an
experiment counts exactly the requests sent to each variant."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from test_calls import SPEC_ROUTE, add_model, prefer

from conftest import lease_free, within_one_minute
from model_router.experiments.controller import LEASE

CANARY = {
    "modelId": "new",
    "baselineModelId": "old",
    "scope": {"agentType": "creative"},
    "steps": [20, 50, 100],
    "stepDuration": 1,
    "minRequestsPerStep": 30,
}


@pytest.fixture
def fleet(make_server, make_mock):
    """Two workers; agents of type `creative` are routed to `old`; `new` is
    registered but routed to by nothing but a canary or experiment."""
    server = make_server(workers=2, MOCK_PROVIDER_KEY="provider-secret")
    old, new = make_mock(latency_ms=20), make_mock(latency_ms=20)
    add_model(server, "old", old)
    add_model(server, "new", new)
    prefer(server, "old")
    server.wait_for_config()
    return server, old, new


def route(server, ids: range, **fields: object) -> list[httpx.Response]:
    return route_each(server, [{"id": f"req-{i}", **fields} for i in ids])


def route_each(server, bodies: list[dict]) -> list[httpx.Response]:
    """/api/route for each body (over SPEC_ROUTE's fields), six at a time."""

    def one(fields: dict) -> httpx.Response:
        r = server.client.post("/api/route", json={**SPEC_ROUTE, **fields})
        assert r.status_code == 200, r.text
        return r

    with ThreadPoolExecutor(6) as pool:
        return list(pool.map(one, bodies))


def drive_canary(server, canary_id: str, until: set[str], limit_s: float = 60) -> dict:
    """Send traffic in batches until the canary reaches one of `until`."""
    deadline, sent = time.time() + limit_s, 0
    while time.time() < deadline:
        route(server, range(sent, sent + 60))
        sent += 60
        canary = server.client.get(f"/api/canaries/{canary_id}").json()
        if canary["state"] in until:
            return canary
    raise AssertionError(f"canary still {canary['state']} at {canary['percent']}%: {canary}")


def test_a_canary_that_fails_is_rolled_back_by_itself(fleet):
    server, _, new = fleet
    new.behave(errorRate=0.6)
    r = server.client.post("/api/canaries", json=CANARY)
    assert r.status_code == 201, r.text
    created = r.json()
    assert (created["state"], created["percent"], created["stepIndex"]) == ("running", 20, 0)
    server.wait_for_config()
    canary = drive_canary(server, created["id"], {"rolledBack", "promoted"})
    assert (canary["state"], canary["percent"], canary["stepIndex"]) == ("rolledBack", 0, 0)
    last = canary["history"][-1]
    assert last["from"] == {"state": "running", "percent": 20}
    assert last["to"] == {"state": "rolledBack", "percent": 0}
    assert last["reason"].startswith("maxErrorRateIncrease breached")
    figures = last["figures"]
    assert figures["canary"]["errorRate"] > 0.3 and figures["baseline"]["errorRate"] == 0
    overview = server.client.get("/api/health/overview").json()
    assert overview["canaries"][0]["state"] == "rolledBack"
    assert overview["canaries"][0]["lastTransition"]["reason"] == last["reason"]
    # Rolled back is 0%: the canary model sees no more traffic.
    server.wait_for_config()
    before = new.requests()
    answers = route(server, range(10_000, 10_040))
    assert new.requests() == before
    assert all("x-model-router-canary" not in a.headers for a in answers)


def test_a_canary_as_good_as_its_baseline_is_promoted(fleet):
    server, _, _ = fleet
    created = server.client.post("/api/canaries", json=CANARY).json()
    server.wait_for_config()
    canary = drive_canary(server, created["id"], {"rolledBack", "promoted"})
    assert (canary["state"], canary["percent"]) == ("promoted", 100)
    assert [h["to"]["percent"] for h in canary["history"]] == [50, 100]
    assert all(h["figures"]["canary"]["requests"] >= 30 for h in canary["history"])
    server.wait_for_config()
    answers = route(server, range(10_000, 10_020))
    assert {a.json()["modelId"] for a in answers} == {"new"}
    assert {a.headers["x-model-router-canary"] for a in answers} == {created["id"]}


def test_canaries_are_steered_by_hand_and_survive_a_restart(fleet):
    server, _, _ = fleet
    c = server.client
    rule = {
        "id": "creative-old",
        "name": "creative to old",
        "condition": {"agentType": ["creative"]},
        "targetModels": [{"modelId": "old"}],
    }
    assert c.post("/api/routing/rules", json=rule).status_code == 201
    by_rule = {**CANARY, "scope": {"ruleId": "creative-old"}, "stepDuration": 3600}
    canary_id = c.post("/api/canaries", json=by_rule).json()["id"]
    server.wait_for_config()
    answers = route(server, range(40))
    diverted = [a for a in answers if a.headers["x-model-router-variant"] == "canary"]
    assert 0 < len(diverted) < 40 and {a.json()["modelId"] for a in diverted} == {"new"}
    assert {a.json()["canaryId"] for a in answers} == {canary_id}
    paused = c.post(f"/api/canaries/{canary_id}/pause").json()
    assert (paused["state"], paused["percent"]) == ("paused", 20)
    assert c.post(f"/api/canaries/{canary_id}/pause").status_code == 409
    assert c.post(f"/api/canaries/{canary_id}/resume").json()["state"] == "running"
    server.restart()
    after = c.get(f"/api/canaries/{canary_id}").json()
    assert [h["reason"] for h in after["history"]] == ["pause by the API", "resume by the API"]
    rolled = c.post(f"/api/canaries/{canary_id}/rollback").json()
    assert (rolled["state"], rolled["percent"]) == ("rolledBack", 0)
    assert c.post("/api/canaries/nope/promote").status_code == 404


def test_a_finished_canary_or_experiment_is_deleted_and_its_scope_routes_as_before(fleet):
    server, _, _ = fleet
    c = server.client
    canary_id = c.post("/api/canaries", json={**CANARY, "stepDuration": 3600}).json()["id"]
    r = c.delete(f"/api/canaries/{canary_id}")
    assert r.status_code == 409 and "promote or roll it back first" in r.text, r.text
    assert c.post(f"/api/canaries/{canary_id}/promote").json()["state"] == "promoted"
    server.wait_for_config()
    assert {a.json()["modelId"] for a in route(server, range(10))} == {"new"}
    assert c.delete(f"/api/canaries/{canary_id}").json() == {"id": canary_id, "deleted": True}
    server.wait_for_config()
    assert {a.json()["modelId"] for a in route(server, range(10))} == {"old"}
    assert c.get(f"/api/canaries/{canary_id}").status_code == 404
    assert c.delete(f"/api/canaries/{canary_id}").status_code == 404
    experiment_id = c.post("/api/experiments", json=EXPERIMENT).json()["id"]
    assert c.delete(f"/api/experiments/{experiment_id}").status_code == 409
    c.post(f"/api/experiments/{experiment_id}/end")
    assert c.delete(f"/api/experiments/{experiment_id}").status_code == 200
    assert c.get(f"/api/experiments/{experiment_id}").status_code == 404
    audit = c.get("/api/audit", params={"resourceType": "canaries"}).json()["data"]
    assert any(e["method"] == "DELETE" and e["resourceId"] == canary_id for e in audit), audit


def test_one_controller_holds_the_rollout_lease_and_frees_it_on_a_clean_stop(fleet):
    server, _, _ = fleet
    deadline = time.time() + 5
    while lease_free(server, LEASE):  # taken on a worker's first beat
        assert time.time() < deadline, "no worker took the controller's lease"
        time.sleep(0.1)
    server.stop()
    assert lease_free(server, LEASE)  # given back: a successor starts at once


TWO = {
    "name": "x",
    "scope": {"agentType": "creative"},
    "variants": [{"modelId": "old"}, {"modelId": "new"}],
}
BAD = [
    ("/api/canaries", {**CANARY, "scope": {}}, "scope"),
    ("/api/canaries", {**CANARY, "scope": {"agentType": "a", "workspaceId": "w"}}, "scope"),
    ("/api/canaries", {**CANARY, "modelId": "ghost"}, "modelId"),
    ("/api/canaries", {**CANARY, "baselineModelId": "new"}, "baselineModelId"),
    ("/api/canaries", {**CANARY, "steps": [50, 20]}, "steps"),
    ("/api/canaries", {**CANARY, "scope": {"ruleId": "no-such-rule"}}, "scope.ruleId"),
    ("/api/canaries", {**CANARY, "guardrails": {"maxCostRatio": 0.5}}, "guardrails.maxCostRatio"),
    ("/api/experiments", {"name": "x", "scope": {"agentType": "a"}, "variants": []}, "variants"),
    (
        "/api/experiments",
        {**TWO, "variants": [{"modelId": "old"}, {"modelId": "new", "weight": 0}]},
        "variants[1].weight",
    ),
    (
        "/api/experiments",
        {**TWO, "variants": [{"modelId": "old", "weight": 1e308}, {"modelId": "new"}]},
        "variants[0].weight",
    ),
    ("/api/experiments", {**TWO, "minDetectableEffect": 0.0001}, "minDetectableEffect"),
    (
        "/api/experiments",
        {**TWO, "primaryMetric": "latency", "minDetectableEffect": 1e-12},
        "minDetectableEffect",
    ),
]


def test_a_canary_or_experiment_that_cannot_run_is_a_400_naming_the_field(fleet):
    server, _, _ = fleet
    for path, body, field in BAD:
        r = server.client.post(path, json=body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["details"]["field"] == field, (body, r.text)
    assert server.client.get("/api/canaries").json()["total"] == 0
    assert server.client.get("/api/experiments").json()["total"] == 0
    taken = server.client.post("/api/experiments", json={**EXPERIMENT, "name": "first"})
    assert taken.status_code == 201
    r = server.client.post("/api/canaries", json=CANARY)
    assert r.status_code == 409
    assert r.json()["error"]["details"] == {"experimentId": taken.json()["id"]}


EXPERIMENT = {
    "name": "old vs new",
    "scope": {"agentType": "creative"},
    "variants": [{"modelId": "old", "weight": 1}, {"modelId": "new", "weight": 1}],
    "primaryMetric": "successRate",
    "minSamplesPerVariant": 10,
}


def results_when(server, experiment_id: str, total: int) -> dict:
    """The experiment once its variants' n add up to `total` (flushed each second)."""
    deadline = time.time() + 10
    while True:
        body = server.client.get(f"/api/experiments/{experiment_id}").json()
        got = sum(v["n"] for v in body["results"]["variants"])
        if got >= total or time.time() > deadline:
            assert got == total, body
            return body
        time.sleep(0.2)


def test_an_experiment_counts_exactly_the_requests_each_variant_served(fleet):
    server, old, new = fleet
    old.behave(latencyMs=5)
    r = server.client.post("/api/experiments", json=EXPERIMENT)
    assert r.status_code == 201, r.text
    experiment_id = r.json()["id"]
    server.wait_for_config()
    answers = route(server, range(120))
    served = Counter(a.headers["x-model-router-variant"] for a in answers)
    assert {a.headers["x-model-router-experiment"] for a in answers} == {experiment_id}
    assert all(a.json()["variant"] == a.json()["modelId"] for a in answers)
    assert all(a.json()["experimentId"] == experiment_id for a in answers)
    body = results_when(server, experiment_id, 120)
    variants = {v["modelId"]: v for v in body["results"]["variants"]}
    assert {m: v["n"] for m, v in variants.items()} == dict(served)
    assert min(served.values()) > 30  # the weights hold, roughly
    assert body["results"]["test"] == "two-proportion z-test"
    assert body["results"]["srm"]["mismatch"] is False
    assert variants["old"]["mean"] == 1.0 and body["decision"] == "running"
    recent = server.client.get("/api/metrics/requests", params={"limit": 120}).json()
    records = recent["data"]
    assert {r["experimentId"] for r in records} == {experiment_id}
    assert Counter(r["variant"] for r in records) == served
    # Feedback: this experiment does not use it, so keeps no request -> variant.
    feedback = f"/api/experiments/{experiment_id}/feedback"
    r = server.client.post(feedback, json={"requestId": "req-3", "score": 0.9})
    assert r.status_code == 409 and "does not use feedback" in r.json()["error"]["message"], r.text
    # Ended: the agent's traffic routes as before.
    ended = server.client.post(f"/api/experiments/{experiment_id}/end").json()
    assert ended["state"] == "ended"
    server.wait_for_config()
    assert {a.json()["modelId"] for a in route(server, range(200, 220))} == {"old"}


def test_routing_test_shows_the_assignment_route_would_make(fleet):
    server, _, _ = fleet
    experiment_id = server.client.post("/api/experiments", json=EXPERIMENT).json()["id"]
    server.wait_for_config()
    answers = route(server, range(12))
    asked = {k: SPEC_ROUTE[k] for k in ("agentType", "workspaceId", "userId", "prompt")}
    for i, answer in enumerate(answers):
        r = server.client.post("/api/routing/test", json={**asked, "id": f"req-{i}"})
        assert r.status_code == 200, r.text
        test = r.json()
        assert (test["experimentId"], test["variant"]) == (experiment_id, answer.json()["variant"])
        first = test["candidates"][0]
        assert first["modelId"] == answer.json()["modelId"]
        assert first["reason"].startswith(f"experiment {experiment_id}, variant ")
    named = server.client.post("/api/routing/test", json={**asked, "model": "new"}).json()
    assert named["experimentId"] is None  # a request that names its model is in none


def test_feedback_credits_the_variant_that_served_the_request_once(fleet):
    server, _, _ = fleet
    body = {**EXPERIMENT, "primaryMetric": "feedback", "minDetectableEffect": 0.1}
    experiment_id = server.client.post("/api/experiments", json=body).json()["id"]
    server.wait_for_config()
    answers = route(server, range(40))
    route(server, range(40))  # the client reuses its request ids: the first use counts
    results_when(server, experiment_id, 80)
    feedback = f"/api/experiments/{experiment_id}/feedback"
    own = SPEC_ROUTE["workspaceId"]  # feedback is taken as the request's workspace only
    r = server.client.post(feedback, json={"requestId": "req-1", "score": 1})
    assert r.status_code == 404
    elsewhere = {"requestId": "req-1", "score": 1, "workspaceId": "ws-other"}
    assert server.client.post(feedback, json=elsewhere).status_code == 404
    for i in range(40):
        body = {"requestId": f"req-{i}", "score": 0.5, "workspaceId": own}
        r = server.client.post(feedback, json=body)
        assert r.status_code == 201, r.text
        assert r.json()["variant"] == answers[i].json()["modelId"]
    r = server.client.post(feedback, json={"requestId": "req-3", "score": 1, "workspaceId": own})
    assert r.status_code == 409
    unknown = {"requestId": "zzz", "score": 1, "workspaceId": own}
    assert server.client.post(feedback, json=unknown).status_code == 404
    variants = server.client.get(f"/api/experiments/{experiment_id}").json()["results"]
    assert {v["mean"] for v in variants["variants"]} == {0.5}


def test_an_experiment_id_used_again_after_delete_starts_afresh(fleet):
    """Ids are the client's: a new experiment under a deleted one's id, sent
    the same request ids, takes their feedback (the old marks and assignments
    belong to the old window)."""
    server, _, _ = fleet
    c = server.client
    body = {**EXPERIMENT, "id": "exp-eval", "primaryMetric": "feedback"}
    body["minDetectableEffect"] = 0.1
    score = {"requestId": "req-0", "score": 1, "workspaceId": SPEC_ROUTE["workspaceId"]}
    for run in range(2):
        assert c.post("/api/experiments", json=body).status_code == 201
        server.wait_for_config()
        served = route(server, range(4))[0].json()["variant"]
        results_when(server, "exp-eval", 4)
        r = c.post("/api/experiments/exp-eval/feedback", json=score)
        assert r.status_code == 201, (run, r.text)
        assert r.json()["variant"] == served
        assert c.post("/api/experiments/exp-eval/end").status_code == 200
        assert c.delete("/api/experiments/exp-eval").status_code == 200


def test_calls_the_router_refuses_are_no_outcome_of_a_variant(fleet):
    server, _, _ = fleet
    r = server.client.post(
        "/api/workspaces/ws-capped/config", json={"budgetLimits": {"requestsPerMinute": 10}}
    )
    assert r.status_code == 201, r.text
    body = {**EXPERIMENT, "scope": {"workspaceId": "ws-capped"}}
    experiment_id = server.client.post("/api/experiments", json=body).json()["id"]
    server.wait_for_config()
    within_one_minute(15)  # the burst
    codes = Counter()
    for i in range(30):
        r = server.client.post(
            "/api/route", json={**SPEC_ROUTE, "id": f"q-{i}", "workspaceId": "ws-capped"}
        )
        codes[r.status_code] += 1
    assert codes == {200: 10, 429: 20}
    variants = results_when(server, experiment_id, 10)["results"]["variants"]
    assert sum(v["n"] for v in variants) == 10
    assert all(v["mean"] in (None, 1.0) for v in variants)  # no refusal as an error


def test_user_assignment_is_sticky_and_decided_on_users(fleet):
    """300 users of two requests each: every user keeps one variant; the
    experiment is judged per user (the samples and the ratio check count
    users) and, `new` failing every call, `old` wins."""
    server, _, new = fleet
    new.behave(errorRate=1.0)
    # Not autoEnd: decided mid-way, it keeps routing users to their variants.
    body = {**EXPERIMENT, "assignment": "user", "autoEnd": False, "minSamplesPerVariant": 100}
    experiment_id = server.client.post("/api/experiments", json=body).json()["id"]
    server.wait_for_config()
    bodies = [{"userId": f"u{u}", "id": f"u{u}-{i}"} for i in range(2) for u in range(300)]
    variant_of: dict[str, set[str]] = {}
    for body, a in zip(bodies, route_each(server, bodies), strict=True):
        variant_of.setdefault(body["userId"], set()).add(a.headers["x-model-router-variant"])
    assert all(len(v) == 1 for v in variant_of.values())
    users = Counter(next(iter(v)) for v in variant_of.values())
    results = results_when(server, experiment_id, 600)["results"]
    assert {v["modelId"]: v["users"] for v in results["variants"]} == dict(users)
    assert results["srm"]["mismatch"] is False
    deadline = time.time() + 15
    while (got := server.client.get(f"/api/experiments/{experiment_id}").json())["winner"] is None:
        assert time.time() < deadline, got
        time.sleep(0.3)
    assert got["decision"] == "winner: old", got
    assert "always-valid p" in got["reason"]


def test_feedback_in_a_user_experiment_counts_per_user(fleet):
    """Each user scores their first request 1 and their second 0: every user's
    mean is 0.5, so per user the variants have no variance at all (scores
    credited to the wrong user, or per request, would have some)."""
    server, _, _ = fleet
    body = {**EXPERIMENT, "assignment": "user", "primaryMetric": "feedback"}
    experiment_id = server.client.post("/api/experiments", json=body).json()["id"]
    server.wait_for_config()
    bodies = [{"userId": f"u{u}", "id": f"u{u}-{i}"} for u in range(12) for i in range(2)]
    route_each(server, bodies)
    results = results_when(server, experiment_id, 24)["results"]
    assert results["test"] == "delta-method z-test (per user)"
    assert sum(v["users"] for v in results["variants"]) == 12
    feedback = f"/api/experiments/{experiment_id}/feedback"
    for b in bodies:
        score = {"requestId": b["id"], "score": int(b["id"].endswith("-0"))}
        r = server.client.post(feedback, json={**score, "workspaceId": SPEC_ROUTE["workspaceId"]})
        assert r.status_code == 201, r.text
    results = server.client.get(f"/api/experiments/{experiment_id}").json()["results"]
    for v in results["variants"]:
        if v["users"] >= 2:
            assert v["mean"] == 0.5
            assert v["ci"] == [pytest.approx(0.5), pytest.approx(0.5)], v


def test_a_decided_experiment_routes_to_its_winner(fleet):
    server, _, new = fleet
    new.behave(errorRate=1.0)
    body = {**EXPERIMENT, "autoEnd": True, "minSamplesPerVariant": 100}
    experiment_id = server.client.post("/api/experiments", json=body).json()["id"]
    server.wait_for_config()
    # `new` fails every call (the router fails over to `old`): it loses.
    deadline, sent = time.time() + 60, 0
    while time.time() < deadline:
        route(server, range(sent, sent + 100))
        sent += 100
        decided = server.client.get(f"/api/experiments/{experiment_id}").json()
        if decided["state"] == "ended":
            break
    assert (decided["decision"], decided["winner"]) == ("winner: old", "old")
    server.wait_for_config()
    assert {a.json()["modelId"] for a in route(server, range(9000, 9020))} == {"old"}


DOC = (Path(__file__).parent.parent / "docs" / "experiments.md").read_text()


def doc_block(name: str) -> dict:
    return json.loads(re.search(rf"```json {name}\n(.*?)```", DOC, re.S).group(1))


def test_the_documented_canary_and_experiment_start_as_written(make_server, make_mock):
    server = make_server(MOCK_PROVIDER_KEY="provider-secret")
    mock = make_mock()
    add_model(server, "claude-3-sonnet", mock)
    add_model(server, "claude-3-5-sonnet", mock)
    c = server.client
    r = c.post("/api/canaries", json=doc_block("canary-request"))
    assert r.status_code == 201, r.text
    assert r.json()["current"]["canary"] == {
        "requests": 0,
        "errorRate": None,
        "p95Ms": None,
        "costPerRequest": None,
    }
    assert c.post("/api/experiments", json=doc_block("experiment-request")).status_code == 409
    c.post(f"/api/canaries/{r.json()['id']}/rollback")
    r = c.post("/api/experiments", json=doc_block("experiment-request"))
    assert r.status_code == 201, r.text
    results = r.json()["results"]
    assert results["samplesNeededPerVariant"] == 3027  # the table's 50% row: no data yet
    assert "| 50% | 1,565 | 3,027 |" in DOC
