"""Liveness, readiness and the deep health check: open, no key needed.

Liveness is the process answering. Readiness means "can route": a config is
loaded. A store that is down or reset does not take a replica out of its
Service (routing goes on from the loaded config); it makes the deep check
`degraded` and says why."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from .. import __version__
from .. import types as t
from ..catalog import utcnow
from ..http import Request, Response, Route, json_response
from ..telemetry.logging import SERVICE


async def health(req: Request) -> Response:
    return json_response(
        t.HealthSummary(status="healthy", timestamp=utcnow(), service=SERVICE, version=__version__)
    )


# Readiness probes have short timeouts of their own; the store's is not ours to wait.
READY_STORE_WAIT_S = 0.25


async def _store_check(req: Request, wait_s: float | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(req.service.store.ping(), wait_s)
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


async def detailed(req: Request) -> Response:
    store, config = await _store_check(req), _config_check(req)
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
        components={"store": store, "config": config},
    )
    return json_response(body, 503 if status == "unhealthy" else 200)


ROUTES = [
    Route("GET", "/health", health, "Liveness", "health", response=t.HealthSummary),
    Route(
        "GET",
        "/health/ready",
        ready,
        "Readiness: a config is loaded (routing works without the store)",
        "health",
        response=t.ReadinessCheck,
    ),
    Route(
        "GET",
        "/health/detailed",
        detailed,
        "Deep health of every component",
        "health",
        response=t.DetailedHealth,
    ),
]
