"""The operations page (/ui) in a real browser: headless Chromium driven by
selenium against a real router carrying traffic from the mock provider.

Each view's figures are checked against the API answer they come from; a
viewer is offered no action, a workspace-scoped key sees its workspace only,
and the page fetches nothing from outside the router (Chromium's performance
log). Screenshots of each view go to artifacts/ui/ (ignored by git).

Chromium and chromedriver are Debian packages: scripts/with-chromium.sh
installs them when missing (`make test` runs the suite through it).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import jwt
import pytest
from test_calls import SPEC_ROUTE, add_model, prefer

from conftest import MockProvider, Server, model_body

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "ui"
JWT_SECRET = "ui-test-jwt-secret-" + "x" * 24
IDLE_MODELS = 98  # with the two that carry traffic: the 100 models the page must handle
WORKSPACES = {"ws-a": 30, "ws-b": 20}  # requests sent for each


@dataclass
class Site:
    server: Server
    viewer_key: str
    scoped_key: str  # an agent key of workspace ws-a
    answers: list[dict] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    def api(self, path: str, **params: object) -> dict:
        r = self.server.client.get(path, params=params)
        assert r.status_code == 200, r.text
        return r.json()

    def listed(self, path: str) -> list[dict]:
        """A list answer, bare or in a page (the planned APIs may use either)."""
        body = self.api(path)
        return body if isinstance(body, list) else body["data"]


def _route(server: Server, workspace: str, n: int) -> list[dict]:
    def one(i: int) -> dict:
        body = {**SPEC_ROUTE, "id": f"{workspace}-{i}", "workspaceId": workspace}
        r = server.client.post("/api/route", json=body)
        assert r.status_code == 200, r.text
        return r.json()

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A router with 100 models, two of them with traffic in two workspaces
    (`flaky` fails a third of its calls over to `steady`), budgets, and keys."""
    work = tmp_path_factory.mktemp("ui")
    flaky = MockProvider("openai", work, error_rate=0.33, latency_ms=5).start()
    steady = MockProvider("openai", work, latency_ms=10, jitter_ms=20).start()
    env = {
        "MODEL_ROUTER_DATA_DIR": str(work / "data"),
        "MOCK_PROVIDER_KEY": "provider-secret",
        "MODEL_ROUTER_JWT_SECRET": JWT_SECRET,
    }
    server = Server(env, work).start()
    try:
        c = server.client
        add_model(server, "flaky", flaky)
        add_model(server, "steady", steady)
        prefer(server, "flaky", "steady")
        for i in range(IDLE_MODELS):
            assert c.post("/api/models", json=model_body(f"idle-{i:03d}")).status_code == 201
        budget = {"budgetLimits": {"daily": 5.0, "monthly": 100.0}}
        assert c.post("/api/workspaces/ws-a/config", json=budget).status_code in (200, 201)
        viewer = c.post("/api/keys", json={"role": "viewer", "name": "ui viewer"}).json()["key"]
        scoped = c.post("/api/keys", json={"role": "agent", "workspaceId": "ws-a"}).json()["key"]
        server.wait_for_config()
        site = Site(server, viewer, scoped)
        for workspace, n in WORKSPACES.items():
            site.answers += _route(server, workspace, n)
        # Set once ws-b has spent it: a budget overrun for the page to show.
        budget = {"budgetLimits": {"daily": 0.0001}}
        assert c.post("/api/workspaces/ws-b/config", json=budget).status_code in (200, 201)
        attempts = sum(len(a["attempts"]) for a in site.answers)
        deadline = time.time() + 15
        while True:  # until the rollups and the request records are flushed
            models = site.api("/api/analytics/models", timeRange="1h")["models"]
            rolled = sum(m["totals"]["attempts"] for m in models)
            recorded = site.api("/api/metrics/requests", limit=1000)["total"]
            if rolled == attempts and recorded == len(site.answers):
                break
            assert time.time() < deadline, (rolled, attempts, recorded)
            time.sleep(0.2)
        yield site
    finally:
        server.close()
        flaky.stop()
        steady.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.fail("chromium and chromedriver are missing: run through scripts/with-chromium.sh")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,900")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def wait(driver, condition, timeout: float = 10):
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)


def sign_in(driver, site: Site, token: str) -> None:
    driver.get(f"{site.url}/ui")
    driver.execute_script("sessionStorage.clear()")
    driver.refresh()
    field = wait(driver, lambda d: d.find_element(By.ID, "token"))
    wait(driver, lambda d: field.is_displayed())
    field.send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#sign-in-form button[type=submit]").click()
    wait(driver, lambda d: d.find_element(By.ID, "view").get_attribute("data-loaded") == "fleet")


def open_view(driver, site: Site, name: str) -> None:
    driver.execute_script("document.getElementById('view').removeAttribute('data-loaded')")
    driver.get(f"{site.url}/ui#{name}")
    wait(driver, lambda d: d.find_element(By.ID, "view").get_attribute("data-loaded") == name)


# The page redraws its view every few seconds: read the DOM in one script
# (atomic in the page), never through element handles a redraw makes stale.
READ = """
return [...document.querySelectorAll(arguments[0])].map((e) => ({
  text: (e.tagName === "TR" ? [...e.children].map((c) => c.textContent).join(" ") : e.textContent)
    .replace(/\\s+/g, " ").trim(),
  data: {...e.dataset},
  class: e.getAttribute("class") || "",
}));
"""


def read(driver, selector: str) -> list[dict]:
    return driver.execute_script(READ, selector)


def one(driver, selector: str) -> dict:
    found = read(driver, selector)
    assert len(found) == 1, (selector, found)
    return found[0]


def number(node: dict) -> float | None:
    raw = node["data"].get("value")
    return float(raw) if raw not in (None, "") else None


def shot(driver, name: str) -> None:
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


# --- the views, as an admin ---------------------------------------------------


def test_fleet_lists_every_model_problems_first_with_the_overviews_figures(browser, site):
    sign_in(browser, site, site.server.admin_key)
    browser.refresh()  # signed in: the page loads straight into the fleet of 100 models
    wait(browser, lambda d: d.find_element(By.ID, "view").get_attribute("data-loaded") == "fleet")
    shown_ms = browser.execute_script(
        "return performance.getEntriesByName('fleet-shown')[0].startTime"
    )
    overview = site.api("/api/health/overview")
    by_id = {m["modelId"]: m for m in overview["models"]}
    rows = read(browser, "tr.model")
    assert len(rows) == len(by_id) == IDLE_MODELS + 2
    severities = [int(r["data"]["severity"]) for r in rows]
    assert severities == sorted(severities, reverse=True)
    # flaky fails a third of its attempts: observed degraded, so it leads.
    assert rows[0]["data"]["model"] == "flaky" and severities[0] >= 2
    for model in ("flaky", "steady"):
        observed = by_id[model]["observed"]
        want = {"successRate": observed["successRate"], **observed["latencyMs"]}
        shown = read(browser, f"tr.model[data-model={model}] [data-field]")
        got = {c["data"]["field"]: number(c) for c in shown}
        for name, figure in want.items():
            assert got[name] == pytest.approx(figure), (model, name)
        assert observed["status"] in one(browser, f"tr.model[data-model={model}]")["text"]
    endpoints = read(browser, "tr.endpoint[data-of=flaky]")
    assert [e["data"]["endpoint"] for e in endpoints] == ["flaky-ep0"]
    version = one(browser, "[data-tile=configVersion] .value")["text"]
    assert version == str(overview["service"]["configVersion"])
    shot(browser, "fleet")
    # From asking for the page to the fleet of 100 models on screen: well under
    # 1 s here; the bound is loose for a loaded machine (the figure is kept).
    (ARTIFACTS / "fleet-shown-ms.txt").write_text(f"{shown_ms:.0f}\n")
    assert shown_ms < 5000


def test_traffic_charts_and_budgets_match_the_analytics(browser, site):
    sign_in(browser, site, site.server.admin_key)
    open_view(browser, site, "traffic")
    models = site.api("/api/analytics/models", timeRange="1h")["models"]
    answer = site.api("/api/analytics/workspaces", timeRange="1h")
    spaces, by_agent = answer["workspaces"], answer["byAgentType"]
    requests = number(one(browser, "[data-tile=requests]"))
    assert requests == sum(m["totals"]["requests"] for m in models) == len(site.answers)
    cost = number(one(browser, "[data-tile=cost]"))
    assert cost == pytest.approx(sum(m["totals"]["costUsd"] for m in models))
    charts = read(browser, "#view-data figure.chart")
    assert len(charts) == 5
    kinds = next(c["text"] for c in charts if c["text"].startswith("Failed attempts by kind"))
    flaky = next(m for m in models if m["modelId"] == "flaky")
    assert flaky["totals"]["errors"] and all(k in kinds for k in flaky["totals"]["errors"])
    for m in models:
        row = f"table.per-model tr[data-model={m['modelId']}]"
        got = {c["data"]["field"]: number(c) for c in read(browser, f"{row} [data-field]")}
        for name in ("p50", "p95", "p99"):
            assert got[name] == pytest.approx(m["totals"]["latencyMs"][name])
        bar = one(browser, f"table[data-by=model] tr[data-name={m['modelId']}]")
        assert number(bar) == pytest.approx(m["totals"]["costUsd"])
    by_workspace = {w["workspaceId"]: w for w in spaces}
    assert set(by_workspace) == set(WORKSPACES)
    for workspace, w in by_workspace.items():
        bar = one(browser, f"table[data-by=workspace] tr[data-name={workspace}]")
        assert number(bar) == pytest.approx(w["totals"]["costUsd"])
        for budget in w["budgets"]:
            row = one(browser, f"tr[data-workspace={workspace}][data-period={budget['period']}]")
            assert float(row["data"]["spent"]) == pytest.approx(budget["spentUsd"])
            limit = row["data"]["limit"]
            assert (float(limit) if limit else None) == budget["limitUsd"]
    # ws-b's daily budget of $0.0001 is spent: its bar says so.
    assert "over" in one(browser, "tr[data-workspace=ws-b][data-period=daily] svg")["class"]
    agents = one(browser, "table[data-by=agentType] tr[data-name=creative]")
    assert number(agents) == pytest.approx(by_agent["creative"]["costUsd"])
    shot(browser, "traffic")
    # Another range: the figures follow it.
    browser.find_element(By.CSS_SELECTOR, "input[name=range][value='7d']").click()
    week = site.api("/api/analytics/models", timeRange="7d")["models"]
    wait(browser, lambda d: "per 1h" in one(d, "#view-data")["text"])
    requests = number(one(browser, "[data-tile=requests]"))
    assert requests == sum(m["totals"]["requests"] for m in week)


def test_rollouts_and_experiments_show_each_or_say_not_available(browser, site):
    sign_in(browser, site, site.server.admin_key)
    open_view(browser, site, "rollouts")
    for what in ("canaries", "experiments"):
        answer = site.server.client.get(f"/api/{what}")
        unavailable = read(browser, f"[data-unavailable={what}]")
        if answer.status_code == 404:
            assert unavailable and "not available" in unavailable[0]["text"]
            continue
        kind = "canary" if what == "canaries" else "experiment"
        assert not unavailable
        assert len(read(browser, f"article[data-{kind}]")) == len(site.listed(f"/api/{what}"))
    shot(browser, "rollouts")


def test_requests_list_their_attempts_filter_and_show_config_and_audit(browser, site):
    sign_in(browser, site, site.server.admin_key)
    open_view(browser, site, "requests")
    latest = site.api("/api/metrics/requests", limit=200)["data"]
    rows = read(browser, "table.requests tbody tr")
    assert len(rows) == len(latest) == len(site.answers)
    outcomes = {}
    for li in read(browser, "table.requests tbody tr ol.attempts li"):
        outcomes.setdefault(li["data"]["of"], []).append(li["data"]["outcome"])
    by_id = {r["id"]: r for r in latest}
    for row in rows:
        record = by_id[row["data"]["request"]]
        assert row["data"]["status"] == str(record["status"])
        assert record["requestId"] in row["text"]
        assert outcomes[record["id"]] == [a["outcome"] for a in record["attemptDetails"]]
    # A failover lists its attempts: model, endpoint, outcome, latency.
    failover = next(r for r in latest if r["attempts"] > 1)
    first = read(browser, f"tr[data-request='{failover['id']}'] ol.attempts li")[0]["text"]
    assert "flaky · flaky-ep0" in first and " ms" in first
    version = site.api("/health/detailed")["components"]["config"]["version"]
    assert number(one(browser, "#config-version")) == version
    if site.server.client.get("/api/audit").status_code == 404:
        assert read(browser, "[data-unavailable=audit]")
    else:
        assert read(browser, "table.audit")
    shot(browser, "requests")
    # Filters: one workspace, then failures only.
    browser.find_element(By.CSS_SELECTOR, "#filter-workspace option[value=ws-b]").click()
    wait(browser, lambda d: len(read(d, "table.requests tbody tr")) == WORKSPACES["ws-b"])
    assert all("ws-b" in r["text"] for r in read(browser, "table.requests tbody tr"))
    browser.find_element(By.CSS_SELECTOR, "#filter-status option[value=failed]").click()
    wait(browser, lambda d: "No requests match" in one(d, "#view-data")["text"])


# --- who sees what ------------------------------------------------------------


def test_a_viewer_is_offered_no_action(browser, site):
    sign_in(browser, site, site.viewer_key)
    assert one(browser, ".role")["text"] == "viewer"
    for name in ("fleet", "traffic", "rollouts", "requests"):
        open_view(browser, site, name)
        assert not read(browser, "#view button"), name
    assert "for admins" in one(browser, "#view-data")["text"]  # the audit log


def test_a_workspace_scoped_key_sees_its_workspace_only(browser, site):
    sign_in(browser, site, site.scoped_key)
    assert one(browser, "#scope")["text"] == "ws-a"
    open_view(browser, site, "traffic")
    budgets = read(browser, "table.budgets tbody tr")
    assert budgets and {b["data"]["workspace"] for b in budgets} == {"ws-a"}
    bars = read(browser, "table[data-by=workspace] tr")
    assert [b["data"]["name"] for b in bars] == ["ws-a"]
    assert number(one(browser, "[data-tile=requests]")) == WORKSPACES["ws-a"]
    shot(browser, "traffic-scoped")
    open_view(browser, site, "requests")
    rows = read(browser, "table.requests tbody tr")
    assert len(rows) == WORKSPACES["ws-a"] and all("ws-a" in r["text"] for r in rows)
    options = read(browser, "#filter-workspace option")
    assert [o["text"] for o in options] == ["all workspaces", "ws-a"]


def test_a_jwt_signs_in_with_the_role_and_workspace_of_its_claims(browser, site):
    token = jwt.encode(
        {"sub": "dana", "role": "viewer", "workspace": "ws-b", "exp": int(time.time()) + 300},
        JWT_SECRET,
        algorithm="HS256",
    )
    sign_in(browser, site, token)
    who = one(browser, "#who")["text"]
    assert who == "viewer dana · workspace ws-b"


def test_a_refused_key_is_asked_again(browser, site):
    browser.get(f"{site.url}/ui")
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    wait(browser, lambda d: d.find_element(By.ID, "token").is_displayed())
    browser.find_element(By.ID, "token").send_keys("mr_nope_not-a-key")
    browser.find_element(By.CSS_SELECTOR, "#sign-in-form button[type=submit]").click()
    wait(browser, lambda d: "not accepted" in one(d, "#sign-in-error")["text"])
    assert browser.execute_script("return document.getElementById('console').hidden")
    assert browser.execute_script("return sessionStorage.length") == 0


# --- the page itself ------------------------------------------------------------


def requested(driver) -> list[str]:
    """The URLs the page asked for since the last call (the performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def test_every_request_goes_to_the_router_and_the_page_fits_a_phone(browser, site):
    requested(browser)  # drop what earlier tests logged
    sign_in(browser, site, site.server.admin_key)
    for name in ("traffic", "rollouts", "requests", "fleet"):
        open_view(browser, site, name)
    urls = requested(browser)
    assert any(u.startswith(f"{site.url}/api/") for u in urls)
    outside = [u for u in urls if not u.startswith(f"{site.url}/") and not u.startswith("data:")]
    assert outside == []
    # No script error, nothing the CSP refused (404s of absent APIs are expected).
    problems = [e for e in browser.get_log("browser") if e["source"] != "network"]
    assert problems == []
    csp = httpx.get(f"{site.url}/ui").headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    # The browser enforces it: a fetch elsewhere is refused before it leaves.
    refused = browser.execute_async_script(
        "const done = arguments[0];"
        "document.addEventListener('securitypolicyviolation',"
        "  (e) => done(e.effectiveDirective), {once: true});"
        "fetch('http://192.0.2.1/elsewhere').catch(() => {});"
    )
    assert refused == "connect-src"
    assert not [u for u in requested(browser) if "192.0.2.1" in u]
    # The shell and its assets need no key; nothing but them is served.
    script = httpx.get(f"{site.url}/ui/app.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith(
        "text/javascript"
    )
    assert httpx.get(f"{site.url}/ui/..%2Fapi.py").status_code == 404
    # A phone: nothing wider than the screen but the tables, which scroll.
    browser.set_window_size(390, 844)
    try:
        open_view(browser, site, "traffic")
        width = browser.execute_script("return document.documentElement.scrollWidth")
        assert width <= browser.execute_script("return window.innerWidth") + 1
        shot(browser, "traffic-phone")
    finally:
        browser.set_window_size(1280, 900)


def test_refreshes_on_its_own_but_not_while_hidden(browser, site):
    sign_in(browser, site, site.server.admin_key)
    first = one(browser, "#status")["text"]
    wait(browser, lambda d: one(d, "#status")["text"] != first, timeout=8)  # every 5 s
    requested(browser)
    browser.execute_script(
        "Object.defineProperty(document, 'hidden', {value: true, configurable: true});"
        "document.dispatchEvent(new Event('visibilitychange'));"
    )
    time.sleep(6)
    assert not [u for u in requested(browser) if "/api/" in u]
    hidden = one(browser, "#status")["text"]
    browser.execute_script(
        "Object.defineProperty(document, 'hidden', {value: false, configurable: true});"
        "document.dispatchEvent(new Event('visibilitychange'));"
    )
    wait(browser, lambda d: one(d, "#status")["text"] != hidden, timeout=3)  # at once


# --- actions ---------------------------------------------------------------------


def create_canary(site: Site) -> str | None:
    """A canary of `steady` against `flaky`, or None when this router has no
    canaries. The body follows the canary API as planned: adapt it here."""
    if site.server.client.get("/api/canaries").status_code == 404:
        return None
    body = {
        "modelId": "steady",
        "baselineModelId": "flaky",
        "scope": {"agentType": "creative"},
        "steps": [10, 50, 100],
    }
    r = site.server.client.post("/api/canaries", json=body)
    assert r.status_code in (200, 201), r.text
    return r.json()["id"]


def test_rolling_back_a_canary_from_the_page_changes_its_state(browser, site):
    canary = create_canary(site)
    if canary is None:
        pytest.skip("this router has no /api/canaries yet")
    sign_in(browser, site, site.viewer_key)
    open_view(browser, site, "rollouts")
    assert read(browser, f"article[data-canary='{canary}']")
    assert not read(browser, "button[data-action]")  # a viewer: no buttons
    sign_in(browser, site, site.server.admin_key)
    open_view(browser, site, "rollouts")
    browser.find_element(
        By.CSS_SELECTOR, f"button[data-canary='{canary}'][data-action=rollback]"
    ).click()
    wait(browser, lambda d: d.switch_to.alert).accept()

    def state() -> str:
        return next(c["state"] for c in site.listed("/api/canaries") if c["id"] == canary)

    deadline = time.time() + 5
    while state() != "rolledBack":
        assert time.time() < deadline, state()
        time.sleep(0.1)
    wait(browser, lambda d: read(d, f"article[data-canary='{canary}'][data-state=rolledBack]"))
    shot(browser, "rollouts-rolled-back")


# --- the views of APIs not merged yet ------------------------------------------------

# The shapes planned for /api/canaries, /api/experiments and /api/audit (as
# the branches building them answer today), one of each kind. Until those
# APIs are in this router, the page is shown these in place of its 404s (a
# fetch wrapper the browser installs before the page's own scripts run); once
# they are, the test skips and the tests above run against the real APIs.
PLANNED = {
    "/api/canaries": {
        "total": 2,
        "data": [
            {
                "id": "cn-1",
                "modelId": "steady",
                "baselineModelId": "flaky",
                "scope": {"workspaceId": "ws-a"},
                "steps": [5, 25, 50, 100],
                "stepIndex": 1,
                "percent": 25,
                "state": "running",
                "stepStartedAt": "2026-01-01T10:00:00Z",
                "guardrails": {
                    "maxErrorRateIncrease": 0.02,
                    "maxP95LatencyRatio": 1.5,
                    "maxCostRatio": 1.2,
                },
                "current": {
                    "canary": {
                        "requests": 120,
                        "errorRate": 0.05,
                        "p95Ms": 42,
                        "costPerRequest": 0.0012,
                    },
                    "baseline": {
                        "requests": 480,
                        "errorRate": 0.01,
                        "p95Ms": 40,
                        "costPerRequest": 0.001,
                    },
                },
                "history": [
                    {
                        "at": "2026-01-01T10:00:00Z",
                        "from": {"state": "running", "percent": 5},
                        "to": {"state": "running", "percent": 25},
                        "reason": "guardrails held",
                    }
                ],
            },
            {
                "id": "cn-2",
                "modelId": "flaky",
                "baselineModelId": "steady",
                "scope": None,
                "steps": [10, 100],
                "stepIndex": 0,
                "percent": 10,
                "state": "paused",
                "stepStartedAt": "2026-01-01T09:00:00Z",
                "guardrails": {"maxErrorRateIncrease": 0.01},
                "current": {"canary": {"errorRate": 0.02}, "baseline": {"errorRate": 0.015}},
                "history": [],
            },
        ],
    },
    "/api/experiments": [
        {
            "id": "ex-1",
            "name": "steady vs flaky",
            "scope": {"agentType": ["creative"]},
            "variants": [{"modelId": "steady", "weight": 50}, {"modelId": "flaky", "weight": 50}],
            "primaryMetric": "latencyMs",
            "state": "running",
            "decision": None,
            "results": {
                "test": "welch-t",
                "pValue": 0.003,
                "alwaysValidPValue": 0.04,
                "variants": [
                    {"modelId": "steady", "n": 510, "mean": 41.2, "ci": [39.8, 42.6]},
                    {"modelId": "flaky", "n": 498, "mean": 47.9, "ci": [45.1, 50.7]},
                ],
                "srm": {"pValue": 0.78, "mismatch": False},
            },
        }
    ],
    "/api/audit": {
        "nextBefore": None,
        "data": [
            {
                "seq": 7,
                "at": "2026-01-01T09:59:00Z",
                "configVersion": 3,
                "keyId": "bootstrap-admin",
                "userId": None,
                "role": "admin",
                "method": "POST",
                "path": "/api/models",
                "resourceType": "model",
                "resourceId": "steady",
                "changes": [
                    {"resourceType": "model", "resourceId": "steady", "after": {"id": "steady"}}
                ],
            }
        ],
    },
}

PLANNED_FETCH = """
(() => {
  const planned = %s;
  const posted = (window.plannedPosts = []);
  const states = {pause: "paused", resume: "running", promote: "promoted", rollback: "rolledBack"};
  const real = window.fetch.bind(window);
  const json = {"content-type": "application/json"};
  const reply = (body) => new Response(JSON.stringify(body), {headers: json});
  window.fetch = (input, init = {}) => {
    const path = new URL(input, location.href).pathname;
    const method = (init.method || "GET").toUpperCase();
    if (method === "GET" && path in planned) return Promise.resolve(reply(planned[path]));
    const act = path.match(/^\\/api\\/canaries\\/([^/]+)\\/(\\w+)$/);
    if (method === "POST" && act) {
      posted.push(path);
      const canary = planned["/api/canaries"].data.find((c) => c.id === decodeURIComponent(act[1]));
      canary.state = states[act[2]];
      return Promise.resolve(reply(canary));
    }
    return real(input, init);
  };
})();
"""


@pytest.fixture
def planned_apis(browser, site) -> Iterator[None]:
    missing = [p for p in PLANNED if site.server.client.get(p).status_code == 404]
    if len(missing) < len(PLANNED):
        pytest.skip("the canary, experiment and audit APIs are here: tested against them")
    source = PLANNED_FETCH % json.dumps(PLANNED)
    script = browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": source})
    yield
    browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", script)


def test_the_planned_canary_experiment_and_audit_shapes_render(browser, site, planned_apis):
    sign_in(browser, site, site.viewer_key)
    open_view(browser, site, "rollouts")
    assert len(read(browser, "article[data-canary]")) == 2
    assert not read(browser, "button[data-action]")  # a viewer: no actions
    sign_in(browser, site, site.server.admin_key)
    open_view(browser, site, "rollouts")
    guardrails = {
        g["data"]["guardrail"]: g["text"]
        for g in read(browser, "article[data-canary=cn-1] tr[data-guardrail]")
    }
    # 5% against 1% errors: 4 points more, over the 2 allowed; latency and cost within.
    assert guardrails == {
        "Error rate increase": "Error rate increase 4.0% ≤ 2.0% breached",
        "p95 latency ratio": "p95 latency ratio 1.05× ≤ 1.50× within",
        "Cost ratio": "Cost ratio 1.20× ≤ 1.20× within",
    }
    card = one(browser, "article[data-canary=cn-1]")["text"]
    assert "25% of traffic, step 2 of 4" in card and "workspaceId=ws-a" in card
    actions = {
        c: [b["data"]["action"] for b in read(browser, f"button[data-canary={c}]")]
        for c in ("cn-1", "cn-2")
    }
    assert actions == {
        "cn-1": ["pause", "promote", "rollback"],
        "cn-2": ["resume", "promote", "rollback"],
    }
    variants = read(browser, "article[data-experiment=ex-1] tr[data-variant]")
    assert [(v["data"]["variant"], v["text"]) for v in variants] == [
        ("steady", "steady 50 510 41.20 [39.80, 42.60]"),
        ("flaky", "flaky 50 498 47.90 [45.10, 50.70]"),
    ]
    result = one(browser, "article[data-experiment=ex-1] dl.result")["text"]
    assert "p-value0.0030" in result and "no mismatch" in result and "none yet" in result
    assert read(browser, "article[data-experiment=ex-1] svg.intervals")
    shot(browser, "rollouts-planned")
    # Rolling back from the page: the POST the planned API takes, and the new state shown.
    browser.find_element(By.CSS_SELECTOR, "button[data-canary=cn-1][data-action=rollback]").click()
    wait(browser, lambda d: d.switch_to.alert).accept()
    wait(browser, lambda d: read(d, "article[data-canary=cn-1][data-state=rolledBack]"))
    assert browser.execute_script("return window.plannedPosts") == ["/api/canaries/cn-1/rollback"]
    assert not read(browser, "button[data-canary=cn-1]")
    open_view(browser, site, "requests")
    [entry] = read(browser, "table.audit tbody tr")
    assert "bootstrap-admin" in entry["text"] and "POST /api/models" in entry["text"]
