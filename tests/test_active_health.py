"""Active health monitoring against real servers (2 workers; 2 replicas on one
Redis) and real mock providers whose health URL is flipped at run time: an
endpoint whose probes fail leaves rotation on every worker within one probe
interval + 1 s and returns as fast; one prober per deployment; operators'
reports that expire."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
import msgspec
import pytest

from conftest import lease_free, model_body
from model_router import types as t
from model_router._core import Clients
from model_router.engine.health import LEASE, STATE_KIND, judge
from model_router.service import Service
from model_router.settings import Settings
from model_router.store import open_store

INTERVAL_S = 1.0
PROBES = {
    "MODEL_ROUTER_HEALTH_PROBE_INTERVAL_MS": str(int(INTERVAL_S * 1000)),
    "MODEL_ROUTER_HEALTH_PROBE_TIMEOUT_MS": "500",
    "MODEL_ROUTER_HEALTH_FAILURES": "2",
    "MODEL_ROUTER_HEALTH_SUCCESSES": "2",
    "MOCK_PROVIDER_KEY": "provider-secret",
}
CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def add_probed_model(server, *mocks) -> None:
    """Model m1: endpoint a (primary) on the first mock, b (backup) on the
    second, each with the mock's health URL."""
    c = server.client
    assert c.post("/api/models", json=model_body("m1")).status_code == 201
    for name, kind, mock in zip("ab", ("primary", "backup"), mocks, strict=False):
        endpoint = {
            "id": name,
            "url": mock.operation_url,
            "type": kind,
            "apiKeyEnv": "MOCK_PROVIDER_KEY",
            "healthCheckUrl": f"{mock.url}/health",
        }
        assert c.post("/api/models/m1/endpoints", json=endpoint).status_code == 201


def served_by(server) -> str:
    """The endpoint that served one chat, on a fresh connection (so calls
    spread over the workers)."""
    r = httpx.post(
        f"{server.url}/v1/chat/completions",
        json=CHAT,
        headers={**server.auth(server.admin_key), "Connection": "close"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return r.headers["x-model-router-endpoint"]


def serve_for(seconds: float, *servers) -> list[tuple[float, str]]:
    """(seconds since the start, endpoint) of chats sent back to back, to
    each server (replica) in turn."""
    start, served = time.monotonic(), []
    while time.monotonic() - start < seconds:
        for server in servers:
            sent = time.monotonic() - start
            served.append((sent, served_by(server)))
        time.sleep(0.03)
    return served


def per_worker_breakers(server) -> dict[int, dict[str, int]]:
    """Each worker's count of breakers by state, until both answered."""
    seen: dict[int, dict[str, int]] = {}
    deadline = time.time() + 10
    while len(seen) < 2:
        assert time.time() < deadline, "not every worker answered"
        body = httpx.get(f"{server.url}/health/detailed", headers={"Connection": "close"}).json()
        seen[body["workerPid"]] = body["components"]["models"]["breakers"]
    return seen


def wait_for_probe(mock, checks: int = 1, timeout: float = 10) -> None:
    deadline = time.time() + timeout
    while health_checks(mock) < checks:
        assert time.time() < deadline, "the endpoint was never probed"
        time.sleep(0.05)


def health_checks(mock) -> int:
    return httpx.get(f"{mock.url}/__mock/stats", timeout=5).json()["healthChecks"]


def test_k_failures_in_a_row_take_an_endpoint_out_and_j_successes_bring_it_back():
    def after(outcomes: str, k: int = 3, j: int = 2) -> list[str]:
        verdict, seen = None, []
        for i, outcome in enumerate(outcomes):
            ok = outcome == "+"
            result = t.ProbeResult(
                at=f"t{i}", ok=ok, status_code=200 if ok else 503, error=None, latency_ms=1.0
            )
            verdict = judge(verdict, result, k, j)
            seen.append(verdict.status[0])  # h or u
        return seen

    assert "".join(after("--+--+")) == "hhhhhh"  # never 3 failures in a row
    assert "".join(after("---+-++")) == "hhuuuuh"
    assert "".join(after("-+", k=1, j=1)) == "uh"
    verdict = None
    for i, ok in enumerate([False, False, False, True]):
        result = t.ProbeResult(at=f"t{i}", ok=ok, status_code=None, error="x", latency_ms=1.0)
        verdict = judge(verdict, result, 3, 2)
    assert verdict is not None and verdict.since == "t2"  # when it went unhealthy
    assert (verdict.consecutive_failures, verdict.consecutive_successes) == (0, 1)


def test_a_failing_probe_takes_an_endpoint_out_of_rotation_on_every_worker(make_server, make_mock):
    server = make_server(workers=2, **PROBES)
    a, b = make_mock(), make_mock()
    add_probed_model(server, a, b)
    server.wait_for_config()
    wait_for_probe(a, 2)  # probed with the key (the mock's /health wants one): healthy
    assert {served_by(server) for _ in range(10)} == {"a"}

    # a still answers calls; only its health URL fails.
    a.behave(healthStatus=503)
    served = serve_for(INTERVAL_S + 3, server)
    late = [endpoint for sent, endpoint in served if sent > INTERVAL_S + 1]
    assert len(late) >= 3 and set(late) == {"b"}, served
    for worker, breakers in per_worker_breakers(server).items():
        assert breakers.get("open") == 1, (worker, breakers)

    overview = server.client.get("/api/health/overview").json()
    [model] = overview["models"]
    endpoints = {e["endpointId"]: e for e in model["endpoints"]}
    down, up = endpoints["a"], endpoints["b"]
    assert down["probes"]["status"] == "unhealthy"
    assert down["probes"]["consecutiveFailures"] >= 2
    last = down["lastProbe"]
    assert last["ok"] is False and last["statusCode"] == 503 and last["error"] == "status 503"
    assert last["latencyMs"] >= 0 and last["at"].endswith("Z")
    assert down["observed"]["status"] == "unhealthy" and down["breaker"]["state"] == "open"
    assert any("active probes failing" in reason for reason in down["observed"]["reasons"])
    assert up["probes"]["status"] == "healthy" and up["lastProbe"]["statusCode"] == 200
    assert up["observed"]["status"] == "healthy"
    assert model["observed"]["status"] == "degraded"
    assert model["observed"]["reasons"] == ["endpoints unhealthy: a"]
    side_by_side = server.client.get("/api/models/m1/health").json()
    assert side_by_side["reported"] is None
    assert side_by_side["observed"]["status"] == "degraded"
    assert [e["endpointId"] for e in side_by_side["endpoints"]] == ["a", "b"]
    assert side_by_side["endpoints"][0]["probes"]["status"] == "unhealthy"

    a.behave(healthStatus=200)
    served = serve_for(INTERVAL_S + 3, server)
    back = next(sent for sent, endpoint in served if endpoint == "a")
    assert back <= INTERVAL_S + 1, served
    late = [endpoint for sent, endpoint in served if sent > INTERVAL_S + 1]
    assert len(late) >= 3 and set(late) == {"a"}, served
    for worker, breakers in per_worker_breakers(server).items():
        assert breakers.get("open") is None, (worker, breakers)


@pytest.mark.parametrize("backend", ["redis"])
def test_one_prober_per_deployment_and_a_successor_when_it_dies(make_server, make_mock):
    interval_s = 0.5
    most = 4 / (0.8 * interval_s) + 1  # probes of one endpoint in 4 s, by one prober
    namespace = f"t-{secrets.token_hex(6)}"
    env = {**PROBES, "MODEL_ROUTER_REDIS_NAMESPACE": namespace}
    env["MODEL_ROUTER_HEALTH_PROBE_INTERVAL_MS"] = str(int(interval_s * 1000))
    env["MODEL_ROUTER_HEALTH_PROBE_TIMEOUT_MS"] = "400"  # below the interval
    first = make_server(workers=2, **env)
    mock, backup = make_mock(), make_mock()
    add_probed_model(first, mock, backup)
    wait_for_probe(mock)  # alone, so the first replica holds the lease
    second = make_server(workers=2, **env)
    second.wait_for_config()

    def probes_in(seconds: float) -> int:
        before = health_checks(mock)
        time.sleep(seconds)
        return health_checks(mock) - before

    # One prober: a probe every 0.4-0.5 s (four would make four times as many).
    assert 6 <= probes_in(4) <= most
    # What the one prober finds, every worker of both replicas acts on.
    mock.behave(healthStatus=503)
    served = serve_for(interval_s + 3, first, second)
    late = [endpoint for sent, endpoint in served if sent > interval_s + 1]
    assert len(late) >= 3 and set(late) == {"b"}, served
    for replica in (first, second):
        for worker, breakers in per_worker_breakers(replica).items():
            assert breakers.get("open") == 1, (worker, breakers)
    mock.behave(healthStatus=200)
    time.sleep(interval_s + 1.5)  # back to healthy, and to one probe an interval
    # The prober dies: its lease lapses (3 s) and a worker of the other replica
    # takes it on its next beat (1 s).
    assert first.proc is not None
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    first.proc = None
    killed, before = time.monotonic(), health_checks(mock)
    wait_for_probe(mock, before + 2)
    assert time.monotonic() - killed <= 3 + 1 + 2 * interval_s + 1
    assert 6 <= probes_in(4) <= most


def test_a_busy_endpoint_passes_its_probes_while_traffic_holds_every_connection(
    make_server, make_mock
):
    """One connection per origin for traffic, held by slow calls back to
    back: the probes of the same origin still get through (their own pool)."""
    server = make_server(workers=1, MODEL_ROUTER_UPSTREAM_POOL="1", **PROBES)
    a = make_mock()
    add_probed_model(server, a)
    server.wait_for_config()
    wait_for_probe(a)
    a.behave(latencyMs=1500)
    stop = threading.Event()

    def call_until_stopped() -> None:
        while not stop.is_set():
            httpx.post(
                f"{server.url}/v1/chat/completions",
                json=CHAT,
                headers=server.auth(server.admin_key),
                timeout=30,
            )

    callers = [threading.Thread(target=call_until_stopped) for _ in range(3)]
    for caller in callers:
        caller.start()
    try:
        before = health_checks(a)
        time.sleep(3 * INTERVAL_S + 0.5)
        assert health_checks(a) - before >= 2
        [endpoint] = server.client.get("/api/models/m1/health").json()["endpoints"]
    finally:
        stop.set()
        for caller in callers:
            caller.join(30)
    assert endpoint["probes"]["status"] == "healthy", endpoint
    assert endpoint["probes"]["consecutiveFailures"] == 0, endpoint
    assert endpoint["lastProbe"]["ok"] is True, endpoint


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_prober_counts_on_from_its_own_result_when_the_store_read_predates_it(
    make_server, make_mock
):
    """The breaker beat reads the store every 0.1 s: a read from before the
    prober's own write must not take its count of failures back."""
    server = make_server(**PROBES)  # K = 2
    a = make_mock()
    a.behave(healthStatus=503)
    add_probed_model(server, a)
    server.close()  # its config stays in the store, for a prober of our own

    async def scenario() -> t.ProbeVerdict:
        service = Service(Settings.from_env(server.env), Clients(0))
        monitor = service.active_health
        try:
            await service.live.refresh()
            await monitor.lead()
            assert monitor.leading
            await monitor.probe("a")  # the first failure, shared
            [first] = monitor.results.values()
            assert first.verdict.consecutive_failures == 1
            # What a store read that predates that write finds: no failure yet.
            before = msgspec.structs.replace(
                first,
                verdict=msgspec.structs.replace(first.verdict, consecutive_failures=0),
                last_probe=msgspec.structs.replace(first.last_probe, at="2020-01-01T00:00:00.000Z"),
            )
            await service.store.put_state(STATE_KIND, {"a": msgspec.json.encode(before)})
            await monitor.sync()
            await monitor.probe("a")  # the second failure in a row
            return monitor.results["a"].verdict
        finally:
            await monitor.stop()
            await service.store.close()

    verdict = asyncio.run(scenario())
    assert (verdict.status, verdict.consecutive_failures) == ("unhealthy", 2)


def test_a_probe_error_is_shown_without_the_secrets_it_carries(make_server, make_mock):
    server = make_server(**PROBES)
    add_probed_model(server, make_mock())
    # A health URL whose failure names it, with the provider's key in it.
    secret = PROBES["MOCK_PROVIDER_KEY"]
    set_health_url(server, "a", f"http://{secret}.invalid/health")
    deadline = time.time() + 10
    while True:
        [a] = server.client.get("/api/models/m1/health").json()["endpoints"]
        if a["lastProbe"] and a["lastProbe"]["error"] and ".invalid" in a["lastProbe"]["error"]:
            break
        assert time.time() < deadline, a
        time.sleep(0.1)
    assert secret not in a["lastProbe"]["error"]
    assert "[REDACTED].invalid" in a["lastProbe"]["error"], a["lastProbe"]


def set_health_url(server, endpoint_id: str, url: str | None) -> None:
    """Give an endpoint another healthCheckUrl (or none), by a config import."""
    c = server.client
    config = c.get("/api/config/export").json()["config"]
    for endpoint in config["endpoints"]:
        if endpoint["id"] == endpoint_id:
            endpoint["healthCheckUrl"] = url
    r = c.post("/api/config/import", params={"mode": "replace"}, json={"config": config})
    assert r.status_code == 200, r.text
    server.wait_for_config()


def shared_probes(server) -> set[str]:
    """The endpoints with a probe verdict in the store's shared state."""

    async def read() -> set[str]:
        store = open_store(Settings.from_env(server.env))
        try:
            return set(await store.get_state(STATE_KIND))
        finally:
            await store.close()

    return asyncio.run(read())


def test_a_verdict_on_an_endpoint_no_longer_probed_or_another_url_is_dropped(
    make_server, make_mock
):
    server = make_server(workers=2, **PROBES)
    a, b, elsewhere = make_mock(), make_mock(), make_mock()
    a.behave(healthStatus=503)
    add_probed_model(server, a, b)
    server.wait_for_config()
    deadline = time.time() + 10
    while served_by(server) != "b" or served_by(server) != "b":
        assert time.time() < deadline, "a was never taken out"
        time.sleep(0.1)
    assert shared_probes(server) == {"a", "b"}

    # a's health URL moves to a healthy server: a is back at once, not held
    # out by the verdict on its old URL until its first probe (an interval on).
    set_health_url(server, "a", f"{elsewhere.url}/health")
    time.sleep(0.3)  # each worker's next sync (every 0.1 s)
    assert [served_by(server) for _ in range(4)] == ["a"] * 4

    assert not lease_free(server, LEASE)
    # Neither endpoint probed any more: the prober drops their verdicts, and
    # gives the lease back; no worker takes it while there is nothing to probe.
    # (A worker still on the old config may take it for a beat: it had URLs
    # to probe. Hence the wait for every worker, and for the lease.)
    set_health_url(server, "a", None)
    set_health_url(server, "b", None)
    server.wait_for_config()
    deadline = time.time() + 3
    while shared_probes(server) or not lease_free(server, LEASE):
        assert time.time() < deadline, (shared_probes(server), lease_free(server, LEASE))
        time.sleep(0.1)
    for _ in range(3):
        time.sleep(0.5)  # the lease beat is every second
        assert lease_free(server, LEASE)


def in_seconds(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def test_an_operators_report_overrides_until_it_expires(make_server, make_mock):
    server = make_server(workers=2, **PROBES)
    add_probed_model(server, make_mock())
    c = server.client
    expires = in_seconds(3)
    r = c.post("/api/models/m1/health", json={"status": "unhealthy", "expiresAt": expires})
    assert r.status_code == 200, r.text
    assert r.json()["expiresAt"].endswith("Z")
    server.wait_for_config()
    for _ in range(6):  # every worker honours the override
        r = httpx.post(
            f"{server.url}/v1/chat/completions",
            json=CHAT,
            headers={**server.auth(server.admin_key), "Connection": "close"},
        )
        assert r.status_code != 200, r.text
    view = c.get("/api/models/m1/health").json()
    assert view["status"] == "unhealthy"
    assert view["reported"]["status"] == "unhealthy" and view["reported"]["expired"] is False
    assert view["reported"]["expiresAt"] == r_expiry(expires)

    time.sleep(3.5)
    assert {served_by(server) for _ in range(6)} == {"a"}
    view = c.get("/api/models/m1/health").json()
    assert view["reported"]["expired"] is True
    assert view["status"] == view["observed"]["status"] == "healthy"
    overview = c.get("/api/health/overview").json()
    assert overview["models"][0]["reported"]["expired"] is True


def r_expiry(sent: str) -> str:
    """The expiry as the router writes it back: UTC, milliseconds, Z."""
    moment = datetime.fromisoformat(sent).astimezone(UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.mark.parametrize(
    "expires", ["tomorrow", "2020-01-01T00:00:00Z", "2026-13-01T00:00:00Z", "x" * 65]
)
def test_a_bad_or_past_expiry_is_a_400_that_changes_nothing(server, expires):
    c = server.client
    assert c.post("/api/models", json=model_body("m1")).status_code == 201
    assert c.post("/api/models/m1/health", json={"status": "degraded"}).status_code == 200
    r = c.post("/api/models/m1/health", json={"status": "unhealthy", "expiresAt": expires})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["details"]["field"] == "expiresAt"
    assert c.get("/api/models/m1/health").json()["status"] == "degraded"
