"""Model management: registry, status, health and endpoints."""

from __future__ import annotations

import time

import msgspec

from .. import types as t
from ..catalog import ENDPOINTS, HEALTH, MODELS, iso, utcnow
from ..http import ApiError, Request, Response, Route, json_response, not_found
from ..store import ExpectAbsent, ExpectPresent
from ..telemetry import figures
from ..telemetry.pii import hex_id
from ..tenancy import model_visible
from ..validation import parse_time
from .health import ModelsHealth
from .writes import apply, update


async def register_model(req: Request) -> Response:
    body: t.ModelCreate = req.body
    now = utcnow()
    fields = msgspec.structs.asdict(body)
    model = t.Model(
        **{**fields, "id": body.id or body.version, "created_at": now, "updated_at": now}
    )
    await apply(req, [ExpectAbsent(MODELS.name, model.id), MODELS.put(model.id, model)])
    return json_response(model, 201)


async def get_model(req: Request) -> Response:
    model_id = req.path_params["modelId"]
    model = await req.service.catalog.get(MODELS, model_id)
    if model is None or not model_visible(req, model_id):
        raise not_found("model", model_id)
    return json_response(model)


async def list_models(req: Request) -> Response:
    q: t.ModelListQuery = req.query
    models = [
        m
        for m in await req.service.catalog.all(MODELS)
        if model_visible(req, m.id)
        and (q.provider is None or m.provider == q.provider)
        and (q.status is None or m.status == q.status)
        and (q.model_type is None or m.model_type == q.model_type)
        and (q.tag is None or q.tag in m.tags)
    ]
    models.sort(key=lambda m: (m.created_at or "", m.id))
    return json_response(t.Page(data=models[q.offset : q.offset + q.limit], total=len(models)))


def _with_status(status: t.ModelStatus):  # type: ignore[no-untyped-def]
    def change(model: t.Model) -> t.Model:
        return msgspec.structs.replace(model, status=status, updated_at=utcnow())

    return change


async def update_status(req: Request) -> Response:
    model_id = req.path_params["modelId"]
    result = await update(req, MODELS, [model_id], _with_status(req.body.status))
    if isinstance(result, str):
        raise not_found("model", model_id)
    return json_response(result[0])


async def batch_update_status(req: Request) -> Response:
    body: t.BatchStatusUpdate = req.body
    ids = [u.model_id for u in body.updates]
    duplicates = sorted({id for id in ids if ids.count(id) > 1})
    if duplicates:
        raise ApiError(
            400, "validation_error", "a model may appear once per batch", {"duplicates": duplicates}
        )
    status_of = {u.model_id: u.status for u in body.updates}
    now = utcnow()
    result = await update(
        req,
        MODELS,
        ids,
        lambda m: msgspec.structs.replace(m, status=status_of[m.id], updated_at=now),
    )
    if isinstance(result, str):
        raise ApiError(
            404,
            "not_found",
            f"model {result!r} not found; no status was changed",
            {"modelId": result},
        )
    return json_response(t.BatchStatusResult(updated=body.updates))


def _expiry(raw: str | None) -> str | None:
    """An ISO 8601 expiry, in the future, as a UTC timestamp (no offset: UTC)."""
    if raw is None:
        return None
    at_ms = parse_time(raw, "expiresAt", "body")
    if at_ms <= time.time() * 1000:
        raise ApiError(
            400,
            "validation_error",
            f"expiresAt: {raw!r} has passed; an override must expire in the future",
            {"in": "body", "field": "expiresAt"},
        )
    return iso(at_ms)


async def set_health(req: Request) -> Response:
    model_id = req.path_params["modelId"]
    body: t.HealthUpdate = req.body
    fields = msgspec.structs.asdict(body) | {"expires_at": _expiry(body.expires_at)}
    health = t.ModelHealth(model_id=model_id, last_checked=utcnow(), **fields)
    await apply(req, [ExpectPresent(MODELS.name, model_id), HEALTH.put(model_id, health)])
    return json_response(health)


async def get_health(req: Request) -> Response:
    model_id = req.path_params["modelId"]
    service = req.service
    if await service.catalog.get(MODELS, model_id) is None or not model_visible(req, model_id):
        raise not_found("model", model_id)
    health = await service.catalog.get(HEALTH, model_id)
    reported = figures.reported(health, int(time.time() * 1000))
    observed = await ModelsHealth.read(service)
    model = service.live.models.get(model_id)
    endpoints = observed.endpoints(model) if model else []
    seen = observed.model(model, endpoints) if model else None
    # The top-level fields (the spec's shape) are what applies: the report
    # while it does, else the observation.
    if health is not None and reported is not None and not reported.expired:
        fields = msgspec.structs.asdict(health)
    else:
        fields = {"model_id": model_id, "status": seen.status if seen else "unknown"}
    view = t.ModelHealthView(**fields, reported=reported, observed=seen, endpoints=endpoints)
    return json_response(view)


async def add_endpoint(req: Request) -> Response:
    model_id = req.path_params["modelId"]
    body: t.EndpointCreate = req.body
    fields = msgspec.structs.asdict(body)
    endpoint = t.Endpoint(
        **{
            **fields,
            "id": body.id or f"ep-{hex_id(6)}",
            "model_id": model_id,
            "created_at": utcnow(),
        }
    )
    await apply(
        req,
        [
            ExpectPresent(MODELS.name, model_id),
            ExpectAbsent(ENDPOINTS.name, endpoint.id),
            ENDPOINTS.put(endpoint.id, endpoint),
        ],
    )
    return json_response(endpoint, 201)


async def list_endpoints(req: Request) -> Response:
    model_id = req.path_params["modelId"]
    catalog = req.service.catalog
    if await catalog.get(MODELS, model_id) is None or not model_visible(req, model_id):
        raise not_found("model", model_id)
    endpoints = [e for e in await catalog.all(ENDPOINTS) if e.model_id == model_id]
    endpoints.sort(key=lambda e: (e.created_at or "", e.id))
    return json_response(t.Page(data=endpoints, total=len(endpoints)))


TAG = "models"
ROUTES = [
    Route(
        "POST",
        "/api/models",
        register_model,
        "Register a model",
        TAG,
        "configure",
        body=t.ModelCreate,
        response=t.Model,
        status=201,
    ),
    Route(
        "GET",
        "/api/models",
        list_models,
        "List models (filters, limit/offset)",
        TAG,
        "read",
        query=t.ModelListQuery,
        response=t.Page[t.Model],
    ),
    Route(
        "PATCH",
        "/api/models/batch/status",
        batch_update_status,
        "Update many models' status at once (all or nothing)",
        TAG,
        "operate",
        body=t.BatchStatusUpdate,
        response=t.BatchStatusResult,
        errors=(404, 409),
    ),
    Route("GET", "/api/models/{modelId}", get_model, "Get a model", TAG, "read", response=t.Model),
    Route(
        "PATCH",
        "/api/models/{modelId}/status",
        update_status,
        "Update a model's status",
        TAG,
        "operate",
        body=t.StatusUpdate,
        response=t.Model,
        errors=(409,),
    ),
    Route(
        "POST",
        "/api/models/{modelId}/health",
        set_health,
        "Report a model's health",
        TAG,
        "operate",
        body=t.HealthUpdate,
        response=t.ModelHealth,
    ),
    Route(
        "GET",
        "/api/models/{modelId}/health",
        get_health,
        "A model's health: what an operator reported beside what the router observed",
        TAG,
        "read",
        response=t.ModelHealthView,
    ),
    Route(
        "POST",
        "/api/models/{modelId}/endpoints",
        add_endpoint,
        "Register an endpoint",
        TAG,
        "configure",
        body=t.EndpointCreate,
        response=t.Endpoint,
        status=201,
    ),
    Route(
        "GET",
        "/api/models/{modelId}/endpoints",
        list_endpoints,
        "List a model's endpoints",
        TAG,
        "read",
        response=t.Page[t.Endpoint],
    ),
]
