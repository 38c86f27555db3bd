"""The OpenAPI 3.1 document, built from the route table and its Structs, and
/docs: a self-contained page that renders it (no CDN, works offline)."""

from __future__ import annotations

from importlib import resources
from typing import Any

import msgspec

from .. import __version__
from .. import types as t
from ..http import Request, Response, Route

REF = "#/components/schemas/{name}"
ERRORS = {
    "400": "Malformed JSON, a wrong type, a missing field or a value out of range",
    "401": "Missing or unknown API key",
    "403": "The key's role or workspace may not do this",
    "404": "Not found",
    "409": "Already exists",
    "413": "Request body too large",
    "429": "A rate limit, the address's failed authentications or its requests in "
    "flight exceeded (see Retry-After)",
}


def build_document(routes: list[Route]) -> dict[str, Any]:
    types: list[Any] = [t.ErrorBody]
    for route in routes:
        types += [x for x in (route.body, route.query, route.response) if x is not None]
    unique = list(dict.fromkeys(types))
    schemas, components = msgspec.json.schema_components(unique, ref_template=REF)
    schema_of = dict(zip(unique, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(
            route, schema_of, components
        )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "model-router",
            "version": __version__,
            "description": "Routes AI agents' model calls: rules, preferences, budgets, "
            "failover and accounting. Every /api route needs 'Authorization: Bearer <key>'.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }


def _operation(
    route: Route, schema_of: dict[Any, Any], components: dict[str, Any]
) -> dict[str, Any]:
    error = {"content": {"application/json": {"schema": schema_of[t.ErrorBody]}}}
    op: dict[str, Any] = {
        "summary": route.summary,
        "tags": [route.tag],
        "operationId": route.handler.__name__.strip("_"),
        "parameters": [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in route.path_params
        ],
        "responses": {
            str(route.status): {
                "description": "OK" if route.status == 200 else "Created",
                "content": {"application/json": {"schema": schema_of.get(route.response, {})}},
            }
        },
    }
    if route.query is not None:
        query = components[route.query.__name__]
        op["parameters"] += [
            {"name": name, "in": "query", "required": False, "schema": schema}
            for name, schema in query["properties"].items()
        ]
    if route.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schema_of[route.body]}},
        }
        op["responses"]["400"] = {"description": ERRORS["400"], **error}
        op["responses"]["413"] = {"description": ERRORS["413"], **error}
    if route.permission is not None:
        op["security"] = [{"bearerAuth": []}]
        op["x-permission"] = route.permission
        for code in ("401", "403", "429"):
            op["responses"][code] = {"description": ERRORS[code], **error}
    if route.path_params:
        op["responses"]["404"] = {"description": ERRORS["404"], **error}
    if route.status == 201:
        op["responses"]["409"] = {"description": ERRORS["409"], **error}
    return op


_document: bytes | None = None


async def openapi(req: Request) -> Response:
    global _document
    if _document is None:
        from . import ROUTES

        _document = msgspec.json.encode(build_document(ROUTES))
    return Response(_document)


async def docs(req: Request) -> Response:
    page = resources.files("model_router").joinpath("static/docs.html").read_bytes()
    return Response(page, content_type="text/html; charset=utf-8")


ROUTES = [
    Route("GET", "/openapi.json", openapi, "This API as an OpenAPI 3.1 document", "meta"),
    Route("GET", "/docs", docs, "Browsable API reference (offline)", "meta"),
]
