"""Analytics and the health overview against real servers (2 workers; 2
replicas on one Redis): known traffic in, the exact counts and costs out, and
percentiles within 1% of the exact ones computed from the attempts the router
reported to the client."""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis
from test_calls import SPEC_ROUTE, add_model, prefer
from test_experiments_api import CANARY, EXPERIMENT, results_when

from conftest import model_body
from model_router.telemetry.figures import Tally

ALPHA = 0.01


def route(server, n: int, key: str | None = None, workspace: str = "ws-marketing-001") -> list:
    """n requests through /api/route, 8 at a time; each answer's attempts and usage."""
    headers = server.auth(key) if key else None

    def one(i: int) -> dict:
        body = {**SPEC_ROUTE, "id": f"req-{i}", "workspaceId": workspace}
        r = server.client.post("/api/route", json=body, headers=headers)
        assert r.status_code == 200, r.text
        return r.json()

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


def expected(answers: list[dict]) -> dict[str, dict]:
    """Per model, what the rollups must say, from the answers alone."""
    figures: dict[str, dict] = defaultdict(
        lambda: {
            "latencies": [],
            "outcomes": Counter(),
            "costNanos": 0,
            **dict.fromkeys(COUNTED, 0),
        }
    )
    for answer in answers:
        attempts = answer["attempts"]
        for i, a in enumerate(attempts):
            f = figures[a["modelId"]]
            f["attempts"] += 1
            f["requests"] += i == 0
            f["failoversIn"] += i > 0
            f["failoversOut"] += i < len(attempts) - 1
            f["outcomes"][a["outcome"]] += 1
            f["latencies"].append(a["latencyMs"])
        usage, f = answer["usage"], figures[answer["modelId"]]
        f["tokensIn"] += usage["promptTokens"]
        f["tokensOut"] += usage["completionTokens"]
        f["costNanos"] += round(usage["cost"] * 1e9)
    return figures


COUNTED = ("attempts", "requests", "failoversIn", "failoversOut", "tokensIn", "tokensOut")


def exact_percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(q * len(ordered)))) - 1]


def analytics(server, path: str = "/api/analytics/models", want: int = 0, **params) -> dict:
    """The answer once the rollups hold `want` attempts (flushed each second)."""
    deadline = time.time() + 10
    while True:
        r = server.client.get(path, params={"timeRange": "1h", **params})
        assert r.status_code == 200, r.text
        body = r.json()
        totals = body["totals"] if "totals" in body else None
        got = (
            totals["attempts"]
            if totals is not None
            else sum(m["totals"]["attempts"] for m in body["models"])
        )
        if got >= want or time.time() > deadline:
            assert got == want, f"{got} attempts rolled up, {want} sent"
            return body
        time.sleep(0.25)


@pytest.fixture
def fleet(make_server, make_mock):
    """A router of 2 workers; model `flaky` fails a third of its calls and
    fails over to `steady`, whose latency is jittered."""
    server = make_server(workers=2, MOCK_PROVIDER_KEY="provider-secret")
    flaky = make_mock(error_rate=0.33, latency_ms=5)
    steady = make_mock(latency_ms=20, jitter_ms=40)
    add_model(server, "flaky", flaky)
    add_model(server, "steady", steady)
    prefer(server, "flaky", "steady")
    server.wait_for_config()
    return server


def assert_matches(body: dict, want: dict[str, dict]) -> None:
    models = {m["modelId"]: m for m in body["models"]}
    assert set(models) == set(want)
    for model_id, w in want.items():
        totals = models[model_id]["totals"]
        for name in COUNTED:
            assert totals[name] == w[name], (model_id, name)
        assert totals["costNanos"] == w["costNanos"]
        assert totals["successes"] == w["outcomes"]["success"]
        errors = {k: n for k, n in w["outcomes"].items() if k != "success"}
        assert totals["errors"] == errors
        for q, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
            truth = exact_percentile(w["latencies"], q)
            got = totals["latencyMs"][name]
            assert abs(got - truth) <= truth * ALPHA + 0.002, (model_id, name, got, truth)
        series = models[model_id]["series"]
        assert sum(p["attempts"] for p in series) == totals["attempts"]


def test_model_analytics_are_exact_across_workers_and_a_restart(fleet):
    answers = route(fleet, 60)
    want = expected(answers)
    body = analytics(fleet, want=sum(w["attempts"] for w in want.values()))
    assert body["range"]["resolution"] == "minute" and body["range"]["interval"] == "1m"
    assert body["range"]["intervalSeconds"] == 60 and body["range"]["timeRange"] == "1h"
    assert_matches(body, want)
    assert want["flaky"]["failoversOut"] > 0, "the traffic did fail over"

    fleet.restart()  # a clean stop flushes what each worker still held
    answers += route(fleet, 20)
    want = expected(answers)
    body = analytics(fleet, want=sum(w["attempts"] for w in want.values()))
    assert_matches(body, want)
    steady = analytics(fleet, want=want["steady"]["attempts"], modelId="steady", interval="5m")
    assert [m["modelId"] for m in steady["models"]] == ["steady"]
    assert steady["range"]["intervalSeconds"] == 300


def test_two_replicas_on_one_redis_add_up(backend, make_server, make_mock):
    if backend != "redis":
        pytest.skip("replicas share a Redis")
    mock = make_mock(latency_ms=10, jitter_ms=20)
    first = make_server(workers=2, MOCK_PROVIDER_KEY="provider-secret")
    second = make_server(
        workers=2,
        MOCK_PROVIDER_KEY="provider-secret",
        MODEL_ROUTER_REDIS_NAMESPACE=first.env["MODEL_ROUTER_REDIS_NAMESPACE"],
    )
    add_model(first, "m1", mock)
    prefer(first, "m1")
    first.wait_for_config()
    second.wait_for_config()
    answers = route(first, 30) + route(second, 25)
    want = expected(answers)
    for server in (first, second):
        assert_matches(analytics(server, want=55), want)


def test_workspace_analytics_budgets_and_scoped_keys(fleet):
    c = fleet.client
    r = c.post(
        "/api/workspaces/ws-a/config",
        json={"budgetLimits": {"daily": 100, "weekly": 500, "monthly": 2000}},
    )
    assert r.status_code in (200, 201), r.text
    fleet.wait_for_config()
    key_a = c.post("/api/keys", json={"role": "agent", "workspaceId": "ws-a"}).json()["key"]
    ours = expected(route(fleet, 12, key_a, "ws-a"))
    route(fleet, 5, workspace="ws-b")
    attempts = sum(w["attempts"] for w in ours.values())
    scoped = httpx.Client(base_url=fleet.url, headers=fleet.auth(key_a), timeout=10)
    body = analytics(fleet, "/api/analytics/workspaces/ws-a", want=attempts)
    assert body["workspaceId"] == "ws-a"
    assert set(body["byModel"]) == set(ours)
    assert list(body["byAgentType"]) == ["creative"]
    assert sum(p["attempts"] for p in body["series"]) == attempts
    daily = body["budgets"][0]
    assert daily["period"] == "daily" and daily["limitUsd"] == 100
    cost = sum(w["costNanos"] for w in ours.values()) / 1e9
    deadline = time.time() + 5  # spend is flushed on its own beat
    while abs(daily["spentUsd"] - cost) > 1e-9 and time.time() < deadline:
        time.sleep(0.25)
        daily = c.get("/api/analytics/workspaces/ws-a").json()["budgets"][0]
    assert daily["spentUsd"] == pytest.approx(cost, abs=1e-9)
    assert daily["remainingUsd"] == pytest.approx(100 - cost)
    assert daily["resetsAt"].endswith("T00:00:00.000Z")
    # A key of ws-a sees ws-a only: the other workspace is refused, and the
    # model analytics hold its own traffic alone.
    assert scoped.get("/api/analytics/workspaces/ws-b").status_code == 403
    assert scoped.get("/api/analytics/models", params={"workspaceId": "ws-b"}).status_code == 403
    mine = scoped.get("/api/analytics/models", params={"timeRange": "1h"}).json()
    assert sum(m["totals"]["attempts"] for m in mine["models"]) == attempts
    scoped.close()


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"timeRange": "2h"}, "timeRange"),
        ({"timeRange": "1h", "from": "2026-01-01T00:00:00Z"}, "timeRange"),
        ({"from": "yesterday"}, "from"),
        ({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "from"),
        ({"timeRange": "30d", "interval": "1m"}, "interval"),
        ({"interval": "3m"}, "interval"),
        ({"experimentId": "no spaces"}, "experimentId"),
        ({"experimentId": "x" * 129}, "experimentId"),
        ({"variant": "-starts-with-a-dash"}, "variant"),
    ],
)
def test_bad_ranges_are_a_400_naming_the_parameter(server, params, field):
    r = server.client.get("/api/analytics/models", params=params)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["details"]["field"] == field


def test_an_experiments_traffic_reads_back_by_variant(make_server, make_mock):
    """Analytics filtered by experiment and variant count exactly the
    requests the experiment credits to each variant, failovers included."""
    server = make_server(workers=2, MOCK_PROVIDER_KEY="provider-secret")
    old, new = make_mock(latency_ms=5), make_mock(latency_ms=5, error_rate=0.2)
    add_model(server, "old", old)
    add_model(server, "new", new)
    prefer(server, "old")  # new is reached by the experiment alone (and old behind it)
    server.wait_for_config()
    r = server.client.post("/api/experiments", json=EXPERIMENT)
    assert r.status_code == 201, r.text
    experiment_id = r.json()["id"]
    server.wait_for_config()
    ours = route(server, 80)
    outside = [  # another agent type: out of the experiment's scope
        server.client.post("/api/route", json={**SPEC_ROUTE, "agentType": "other"}).json()
        for _ in range(5)
    ]
    assert all("variant" not in a or a["variant"] is None for a in outside)
    results = results_when(server, experiment_id, 80)["results"]
    n = {v["modelId"]: v["n"] for v in results["variants"]}
    by_variant = defaultdict(list)
    for answer in ours:
        by_variant[answer["variant"]].append(answer)
    served = {v: len(answers) for v, answers in by_variant.items()}
    assert n == served and min(n.values()) > 15, results
    everything = sum(len(a["attempts"]) for a in ours + outside)
    analytics(server, want=everything)  # every worker's rollups are in

    for variant, answers in by_variant.items():
        want = expected(answers)
        body = analytics(
            server,
            want=sum(w["attempts"] for w in want.values()),
            experimentId=experiment_id,
            variant=variant,
        )
        assert_matches(body, want)
        # Each request's first attempt: on the variant's model, or on the
        # fallback when the variant's breaker was open (its failure too).
        assert sum(m["totals"]["requests"] for m in body["models"]) == n[variant]
        assert list(body["byVariant"]) == [variant]
        assert body["byVariant"][variant]["requests"] == n[variant]
    assert any(len(a["attempts"]) > 1 for a in by_variant["new"]), "new did fail over to old"

    both = analytics(server, want=sum(len(a["attempts"]) for a in ours), experimentId=experiment_id)
    assert {v: f["requests"] for v, f in both["byVariant"].items()} == n
    space = server.client.get(
        f"/api/analytics/workspaces/{SPEC_ROUTE['workspaceId']}",
        params={"timeRange": "1h", "experimentId": experiment_id},
    ).json()
    assert {v: f["requests"] for v, f in space["byVariant"].items()} == n
    assert space["totals"]["requests"] == 80
    unfiltered = server.client.get("/api/analytics/models", params={"timeRange": "1h"}).json()
    assert unfiltered["byVariant"] is None  # no experiment asked for
    assert sum(m["totals"]["requests"] for m in unfiltered["models"]) == 85

    for params in (
        {"experimentId": "experiment-none"},
        {"experimentId": experiment_id, "variant": "canary"},
        {"variant": "nobody"},
    ):
        empty = server.client.get("/api/analytics/models", params={"timeRange": "1h", **params})
        assert empty.status_code == 200, empty.text
        assert empty.json()["models"] == []
        assert empty.json()["byVariant"] == ({} if "experimentId" in params else None)


def test_a_canarys_traffic_reads_back_as_canary_and_baseline(make_server, make_mock):
    server = make_server(MOCK_PROVIDER_KEY="provider-secret")
    add_model(server, "old", make_mock())
    add_model(server, "new", make_mock())
    prefer(server, "old")
    server.wait_for_config()
    canary = {**CANARY, "stepDuration": 3600}  # holds its first step, 20%
    r = server.client.post("/api/canaries", json=canary)
    assert r.status_code == 201, r.text
    canary_id = r.json()["id"]
    server.wait_for_config()
    answers = route(server, 40)
    sides = Counter(a["variant"] for a in answers)
    assert {a["canaryId"] for a in answers} == {canary_id} and set(sides) == {"canary", "baseline"}
    body = analytics(server, want=40, experimentId=canary_id)
    assert {v: f["requests"] for v, f in body["byVariant"].items()} == sides
    only = analytics(server, want=sides["canary"], experimentId=canary_id, variant="canary")
    assert [(m["modelId"], m["totals"]["requests"]) for m in only["models"]] == [
        ("new", sides["canary"])
    ]


def test_the_overview_shows_a_failing_endpoint_beside_a_healthy_one(make_server, make_mock):
    server = make_server(workers=2, MOCK_PROVIDER_KEY="provider-secret")
    broken, good = make_mock(error_rate=1.0), make_mock()
    add_model(server, "broken", broken)
    add_model(server, "good", good)
    prefer(server, "broken", "good")
    c = server.client
    c.post("/api/models/broken/health", json={"status": "healthy"})
    workspace = c.post("/api/workspaces/ws-marketing-001/config", json={"budgetLimits": {}})
    assert workspace.status_code in (200, 201), workspace.text
    server.wait_for_config()
    route(server, 20)
    deadline = time.time() + 10
    while True:
        body = c.get("/api/health/overview").json()
        models = {m["modelId"]: m for m in body["models"]}
        if models["good"]["observed"]["attempts"] >= 20 or time.time() > deadline:
            break
        time.sleep(0.25)
    assert body["service"]["workers"] == 2 and body["service"]["store"]["status"] == "up"
    broken_view, good_view = models["broken"], models["good"]
    assert broken_view["reported"]["status"] == "healthy"
    assert broken_view["observed"]["status"] == "unhealthy"
    assert broken_view["observed"]["successRate"] == 0
    [endpoint] = broken_view["endpoints"]
    assert endpoint["breaker"]["state"] == "open" and endpoint["breaker"]["nextProbeAt"]
    assert good_view["observed"]["status"] == "healthy"
    assert good_view["observed"]["requestsPerMinute"] > 0
    assert good_view["spendTodayUsd"] > 0
    side_by_side = c.get("/api/models/broken/health").json()
    assert side_by_side["reported"]["status"] == "healthy"
    assert side_by_side["observed"]["status"] == "unhealthy"
    detailed = httpx.get(f"{server.url}/health/detailed").json()
    assert detailed["components"]["models"]["observed"]["unhealthy"] >= 1
    breakers = {
        line.split('endpoint="')[1].split('"')[0]: line.rsplit(" ", 1)[1]
        for line in httpx.get(f"{server.url}/metrics").text.splitlines()
        if line.startswith("model_router_breaker_state{")
    }
    assert breakers == {"broken-ep0": "2.0", "good-ep0": "0.0"}
    assert gauges(server, "model_router_endpoint_observed_status") == {
        (("endpoint", "broken-ep0"), ("model", "broken")): 2.0,  # unhealthy
        (("endpoint", "good-ep0"), ("model", "good")): 0.0,  # healthy
    }
    # The workspace's spend today, as /metrics says, is what its models spent.
    deadline = time.time() + 5
    while True:
        models = c.get("/api/health/overview").json()["models"]
        today = sum(m["spendTodayUsd"] for m in models)
        spend = gauges(server, "model_router_workspace_spend_usd")
        if spend[("period", "daily"), ("workspace", "ws-marketing-001")] == pytest.approx(today):
            break
        assert time.time() < deadline, (spend, today)
        time.sleep(0.25)
    assert today > 0 and {labels[0][1] for labels in spend} == {"daily", "weekly", "monthly"}


def gauges(server, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """A gauge's samples on /metrics, by their labels (sorted by name, as
    the exposition format writes them)."""
    samples = {}
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) + 1 :].rsplit("} ", 1)
            pairs = (pair.split("=", 1) for pair in labels.split(","))
            samples[tuple((k, v.strip('"')) for k, v in pairs)] = float(value)
    return samples


def test_streams_report_their_time_to_first_token(make_server, make_mock):
    server = make_server(MOCK_PROVIDER_KEY="provider-secret")
    add_model(server, "m1", make_mock(stream_chunks=4, latency_ms=400))  # 100 ms a chunk
    prefer(server, "m1")
    server.wait_for_config()
    for _ in range(3):
        body = {"model": "auto", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        with server.client.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            r.read()
    [model] = analytics(server, want=3)["models"]
    ttft, latency = model["totals"]["ttftMs"], model["totals"]["latencyMs"]
    assert ttft["p50"] is not None and latency["p50"] is not None
    assert 0 < ttft["p50"] < latency["p50"] - 150, "the first token came before the last"


def test_the_workspace_list_and_the_overview_follow_a_scoped_key(fleet):
    c = fleet.client
    budgets = {"ws-a": {"daily": 10.0}, "ws-idle": {"monthly": 50.0}}
    for workspace, limits in budgets.items():
        r = c.post(f"/api/workspaces/{workspace}/config", json={"budgetLimits": limits})
        assert r.status_code in (200, 201), r.text
    r = c.post("/api/workspaces/ws-steady/config", json={"modelRestrictions": ["steady"]})
    assert r.status_code in (200, 201), r.text
    fleet.wait_for_config()
    ours = expected(route(fleet, 6, workspace="ws-a"))
    theirs = expected(route(fleet, 4, workspace="ws-b"))
    attempts = sum(w["attempts"] for w in ours.values())
    everyone = attempts + sum(w["attempts"] for w in theirs.values())
    analytics(fleet, want=everyone)
    body = c.get("/api/analytics/workspaces", params={"timeRange": "1h"}).json()
    spaces = {w["workspaceId"]: w for w in body["workspaces"]}
    # Traffic or a config puts a workspace on the list.
    assert list(spaces) == ["ws-a", "ws-b", "ws-idle", "ws-steady"]
    assert spaces["ws-a"]["totals"]["attempts"] == attempts
    assert spaces["ws-a"]["budgets"][0]["limitUsd"] == 10.0
    assert spaces["ws-idle"]["totals"]["requests"] == 0
    assert [b["limitUsd"] for b in spaces["ws-idle"]["budgets"]] == [None, None, 50.0]
    assert list(body["byAgentType"]) == ["creative"]
    assert body["byAgentType"]["creative"]["attempts"] == everyone

    key_a = c.post("/api/keys", json={"role": "viewer", "workspaceId": "ws-a"}).json()["key"]
    with httpx.Client(base_url=fleet.url, headers=fleet.auth(key_a), timeout=10) as scoped:
        mine = scoped.get("/api/analytics/workspaces", params={"timeRange": "1h"}).json()
        assert [w["workspaceId"] for w in mine["workspaces"]] == ["ws-a"]
        assert mine["byAgentType"]["creative"]["attempts"] == attempts
        other = scoped.get("/api/analytics/workspaces", params={"workspaceId": "ws-b"})
        assert other.status_code == 403
    # The overview of a scoped key holds the models its workspace may use.
    key_s = c.post("/api/keys", json={"role": "viewer", "workspaceId": "ws-steady"}).json()["key"]
    everything = c.get("/api/health/overview").json()["models"]
    assert [m["modelId"] for m in everything] == ["flaky", "steady"]
    restricted = httpx.get(f"{fleet.url}/api/health/overview", headers=fleet.auth(key_s))
    assert [m["modelId"] for m in restricted.json()["models"]] == ["steady"]


def test_recent_requests_list_each_attempt(fleet):
    answers = {a["requestId"]: a for a in route(fleet, 12)}
    deadline = time.time() + 5
    while True:
        recent = fleet.client.get("/api/metrics/requests").json()["data"]
        if len(recent) >= len(answers) or time.time() > deadline:
            break
        time.sleep(0.1)
    assert len(recent) == len(answers)
    for record in recent:
        tried = answers[record["requestId"]]["attempts"]
        assert record["attempts"] == len(record["attemptDetails"]) == len(tried)
        for shown, answered in zip(record["attemptDetails"], tried, strict=True):
            assert shown["modelId"] == answered["modelId"]
            assert shown["endpointId"] == answered["endpointId"]
            assert shown["outcome"] == answered["outcome"]
            assert shown["latencyMs"] == answered["latencyMs"]
            assert shown["error"] is None  # a provider's message is not for every reader
    assert any(r["attempts"] > 1 for r in recent), "the traffic did fail over"


def test_the_workspace_list_and_health_read_spend_without_writing(backend, make_server, redis_url):
    """/ui polls them every 5 s: reading spend must not create counters. (The
    spend beat itself keeps counters only for workspaces with a budget.)"""
    if backend != "redis":
        pytest.skip("counters are seen from outside in Redis")
    server = make_server()
    c = server.client
    c.post("/api/models", json=model_body("m1")).raise_for_status()
    for w in ("ws-1", "ws-2", "ws-3"):
        c.post(f"/api/workspaces/{w}/config", json={"modelRestrictions": ["m1"]})
    server.wait_for_config()
    body = c.get("/api/analytics/workspaces", params={"timeRange": "1h"}).json()
    daily = {w["workspaceId"]: w["budgets"][0] for w in body["workspaces"]}
    assert daily.keys() == {"ws-1", "ws-2", "ws-3"}
    assert all(d["spentUsd"] == 0 and d["limitUsd"] is None for d in daily.values())
    assert c.get("/api/health/overview").status_code == 200
    namespace = server.env["MODEL_ROUTER_REDIS_NAMESPACE"]
    written = list(redis.Redis.from_url(redis_url).scan_iter(f"{{{namespace}}}:counter:spend:*"))
    assert written == []


def test_callers_leaving_are_no_verdict_on_observed_health():
    """A `cancelled` attempt (its caller gone) counts as an attempt, but the
    observed success rate, and so the status, is over the others."""
    tally = Tally()
    tally.add("success", "attempts", 9)
    tally.add("cancelled", "attempts", 91)
    observed = tally.observed(300)
    assert (observed.attempts, observed.success_rate, observed.status) == (100, 1.0, "healthy")
    tally.add("timeout", "attempts", 9)
    assert tally.observed(300).success_rate == 0.5
    only_left = Tally()
    only_left.add("cancelled", "attempts", 3)
    assert only_left.observed(300).status == "unknown"
