"""Prometheus /metrics (open like the health checks, unless
MODEL_ROUTER_METRICS_KEY asks scrapers for a bearer key) and the recent requests."""

from __future__ import annotations

import hmac

import msgspec

from .. import types as t
from ..http import ApiError, Request, Response, Route, json_response
from ..store import StoreUnavailable
from ..telemetry import metrics
from .health import fleet_metrics


async def prometheus(req: Request) -> Response:
    key = req.service.settings.metrics_key
    if key is not None:
        given = req.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), key.encode()):
            raise ApiError(
                401,
                "unauthorized",
                "/metrics needs the metrics key (MODEL_ROUTER_METRICS_KEY) as a bearer token",
                headers=[("www-authenticate", "Bearer")],
            )
    try:
        fleet = await fleet_metrics(req.service)
    except StoreUnavailable:  # the workers' own samples still answer
        fleet = []
    body, content_type = metrics.render(fleet)
    return Response(body, content_type=content_type)


async def recent_requests(req: Request) -> Response:
    q: t.RecentQuery = req.query
    raw = await req.service.store.recent(q.limit)
    items, listed = [], set()
    for record in (msgspec.json.decode(item, type=t.RecentRequest) for item in raw):
        if record.id not in listed:  # a push sent again after its answer was lost
            listed.add(record.id)
            items.append(record)
    principal = req.principal
    if principal is not None and principal.workspace_id is not None:
        items = [i for i in items if i.workspace_id == principal.workspace_id]
    return json_response(t.Page(data=items, total=len(items)))


ROUTES = [
    Route(
        "GET",
        "/metrics",
        prometheus,
        "Prometheus metrics of every worker",
        "monitoring",
        errors=(401,),  # with MODEL_ROUTER_METRICS_KEY set
        media=("text/plain",),  # Prometheus text format
    ),
    Route(
        "GET",
        "/api/metrics/requests",
        recent_requests,
        "The latest routed requests, across all workers (?limit=N, at most 1000)",
        "monitoring",
        "read",
        query=t.RecentQuery,
        response=t.Page[t.RecentRequest],
    ),
]
