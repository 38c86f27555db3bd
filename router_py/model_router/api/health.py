"""Liveness, readiness and the deep health check (open, no key needed), and
the fleet's health overview: every model and endpoint in one answer.

Liveness is the process answering. Readiness means "can route": a config is
loaded. A store that is down or reset does not take a replica out of its
Service (routing goes on from the loaded config); it makes the deep check
`degraded` and says why."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from .. import __version__
from .. import types as t
from ..catalog import CANARIES, HEALTH, iso, utcnow
from ..engine.spend import PERIOD_NAMES, counter_name, period_keys, workspaces_spent
from ..http import Request, Response, Route, json_response
from ..telemetry import figures, metrics
from ..telemetry.logging import SERVICE
from ..tenancy import model_visible
from .experiments import canary_summaries

if TYPE_CHECKING:
    from ..service import Service


async def health(req: Request) -> Response:
    return json_response(
        t.HealthSummary(status="healthy", timestamp=utcnow(), service=SERVICE, version=__version__)
    )


# Readiness probes have short timeouts of their own; the store's is not ours to wait.
READY_STORE_WAIT_S = 0.25


async def _store_check(req: Request, wait_s: float | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(wait_s):  # not wait_for: on 3.11 it can drop a cancel
            await req.service.store.ping()
    except Exception as exc:
        return {
            "status": "down",
            "backend": req.service.backend,
            "error": f"{type(exc).__name__}: {exc}",
        }
    latency = (time.perf_counter() - started) * 1000
    return {"status": "up", "backend": req.service.backend, "latencyMs": round(latency, 3)}


def _config_check(req: Request) -> dict[str, Any]:
    live = req.service.live
    engine = live.engine
    if live.version < 0:
        return {"status": "down", "error": live.last_error or "config not loaded"}
    check: dict[str, Any] = {
        "status": "up" if live.last_error is None and live.reset is None else "stale",
        "version": live.version,
        "epoch": live.epoch,
        "models": engine.model_count,
        "endpoints": engine.endpoint_count,
        "rules": engine.rule_count,
        "ageSeconds": round(time.time() - (live.loaded_at or time.time()), 3),
        "lastError": live.last_error,
    }
    if live.reset is not None:
        check["storeReset"] = {
            "message": "store reset detected: the store holds an older or foreign config; "
            "serving the last loaded one until the config is imported again",
            "storeEpoch": live.reset.epoch,
            "storeVersion": live.reset.version,
            "servedEpoch": live.epoch,
            "servedVersion": live.version,
        }
    return check


async def ready(req: Request) -> Response:
    checks = {"store": await _store_check(req, READY_STORE_WAIT_S), "config": _config_check(req)}
    is_ready = checks["config"]["status"] != "down"
    body = t.ReadinessCheck(
        status="ready" if is_ready else "not_ready", timestamp=utcnow(), checks=checks
    )
    return json_response(body, 200 if is_ready else 503)


async def _models_check(req: Request) -> dict[str, Any]:
    """How many models the router observes in each state, and breakers in each state."""
    observed = await ModelsHealth.read(req.service)
    states = Counter(
        observed.model(m, observed.endpoints(m)).status for m in req.service.live.models.values()
    )
    engine = req.service.live.engine
    breakers = Counter(
        state[0]
        for state in map(engine.breaker_state, req.service.live.endpoints)
        if state is not None
    )
    return {
        "observed": dict(sorted(states.items())),
        "breakers": dict(sorted(breakers.items())),
        "windowSeconds": observed.window_seconds,
    }


async def detailed(req: Request) -> Response:
    store, config = await _store_check(req), _config_check(req)
    models = await _models_check(req) if store["status"] == "up" else {"status": "unknown"}
    status: Literal["healthy", "degraded", "unhealthy"]
    if config["status"] == "down":
        status = "unhealthy"
    elif config["status"] == "stale" or store["status"] == "down":
        status = "degraded"
    else:
        status = "healthy"
    body = t.DetailedHealth(
        status=status,
        timestamp=utcnow(),
        service=SERVICE,
        version=__version__,
        uptime_seconds=round(time.time() - req.service.started_at, 3),
        worker_pid=req.service.pid,
        components={"store": store, "config": config, "models": models},
    )
    return json_response(body, 503 if status == "unhealthy" else 200)


def _breaker(service: Service, endpoint_id: str) -> t.BreakerView | None:
    state = service.live.engine.breaker_state(endpoint_id)
    if state is None:
        return None
    name, open_until_ms = state
    return t.BreakerView(
        state=name,
        next_probe_at=None if open_until_ms is None else iso(open_until_ms),
    )


async def _spend_today(service: Service) -> dict[str, int]:
    """Nano-dollars each model spent today (UTC), fleet-wide."""
    day = period_keys(datetime.now(UTC))["d"]
    names = {m: counter_name("model", m, "d", day) for m in service.live.models}
    totals = await service.store.read_counters(list(names.values()))
    return {m: totals[name] for m, name in names.items()}


async def fleet_metrics(service: Service) -> list[metrics.Metric]:
    """For /metrics: every endpoint's observed status as the overview shows
    it, and each configured workspace's spend per budget period (labels
    bounded by the configuration, not by traffic)."""
    observed = await ModelsHealth.read(service)
    statuses = [
        (model.id, e.endpoint_id, e.observed.status)
        for model in service.live.models.values()
        for e in observed.endpoints(model)
    ]
    spent = await workspaces_spent(service.store, service.live.workspaces, datetime.now(UTC))
    spend = [
        (workspace, PERIOD_NAMES[p], nanos / figures.NANOS_PER_USD)
        for workspace, by_period in spent.items()
        for p, nanos in by_period.items()
    ]
    return [metrics.endpoint_observed(statuses), metrics.workspace_spend(spend)]


class ModelsHealth:
    """Every model's and endpoint's observed health, from one read of the
    last minutes' rollups, the breakers and the active probes' results."""

    def __init__(self, service: Service, cells: list[figures.Cell], window_seconds: int):
        self.service = service
        self.window_seconds = window_seconds
        self.by_model = figures.tally(cells, lambda _, d: d["model"])
        self.by_endpoint = figures.tally(cells, lambda _, d: (d["model"], d["endpoint"]))

    @classmethod
    async def read(cls, service: Service) -> ModelsHealth:
        cells, window_seconds = await figures.recent(service.store, int(time.time() * 1000))
        return cls(service, cells, window_seconds)

    def _outcomes(self, tally: figures.Tally | None) -> t.Observed:
        return (tally or figures.Tally()).observed(self.window_seconds)

    def endpoints(self, model: t.SnapshotModel) -> list[t.EndpointOverview]:
        views = []
        for e in model.endpoints:
            active = self.service.active_health.results.get(e.id) if e.health_check_url else None
            breaker = _breaker(self.service, e.id)
            probes = active.verdict if active else None
            outcomes = self._outcomes(self.by_endpoint.get((model.id, e.id)))
            views.append(
                t.EndpointOverview(
                    endpoint_id=e.id,
                    observed=figures.endpoint_observed(outcomes, breaker, probes),
                    breaker=breaker,
                    probes=probes,
                    last_probe=active.last_probe if active else None,
                )
            )
        return views

    def model(self, model: t.SnapshotModel, endpoints: list[t.EndpointOverview]) -> t.Observed:
        return figures.model_observed(self._outcomes(self.by_model.get(model.id)), endpoints)


async def overview(req: Request) -> Response:
    service = req.service
    observed = await ModelsHealth.read(service)
    spend = await _spend_today(service)
    now_ms = int(time.time() * 1000)
    reports = {h.model_id: h for h in await service.catalog.all(HEALTH)}
    models = []
    for model in sorted(service.live.models.values(), key=lambda m: m.id):
        if not model_visible(req, model.id):
            continue
        endpoints = observed.endpoints(model)
        models.append(
            t.ModelOverview(
                model_id=model.id,
                status=model.status,
                reported=figures.reported(reports.get(model.id), now_ms),
                observed=observed.model(model, endpoints),
                spend_today_usd=spend.get(model.id, 0) / figures.NANOS_PER_USD,
                endpoints=endpoints,
            )
        )
    body = t.HealthOverview(
        timestamp=utcnow(),
        service=t.ServiceOverview(
            version=__version__,
            uptime_seconds=round(time.time() - service.started_at, 3),
            workers=service.settings.workers,
            store=await _store_check(req),
            config_version=service.live.version,
        ),
        models=models,
        canaries=canary_summaries(await service.catalog.all(CANARIES)),
    )
    return json_response(body)


ROUTES = [
    Route("GET", "/health", health, "Liveness", "health", response=t.HealthSummary),
    Route(
        "GET",
        "/health/ready",
        ready,
        "Readiness: a config is loaded (routing works without the store)",
        "health",
        response=t.ReadinessCheck,
        answers=(503,),
    ),
    Route(
        "GET",
        "/health/detailed",
        detailed,
        "Deep health of every component",
        "health",
        response=t.DetailedHealth,
        answers=(503,),
    ),
    Route(
        "GET",
        "/api/health/overview",
        overview,
        "The fleet: every model and endpoint, reported and observed, breakers, spend today "
        "(a workspace-scoped key: the models its workspace may use)",
        "health",
        "read",
        response=t.HealthOverview,
    ),
]
