"""The OpenAPI 3.1 document, built from the route table and its Structs, and
/docs: a self-contained page that renders it (no CDN, works offline).

Everything in it follows from a Route: what the app does with each of its
fields (authenticate, decode a body or a query, bind path ids) says which
statuses can answer, and the path says which error shape they come in.
tests/test_contract.py holds the server to it with schemathesis.
"""

from __future__ import annotations

import types
from importlib import resources
from typing import Any, get_args

import msgspec

from .. import __version__
from .. import types as t
from ..http import JSON, Request, Response, Route
from .calls import STREAM_CONTENT_TYPE

REF = "#/components/schemas/{name}"
DESCRIPTIONS = {
    "200": "OK",
    "201": "Created",
    "400": "Malformed JSON, a wrong type, a missing field or a value out of range",
    "401": "Missing or unknown API key",
    "402": "The workspace's budget would be exceeded",
    "403": "The key's role or workspace may not do this",
    "404": "Not found",
    "409": "Already exists, or lost to concurrent writers",
    "413": "Request body too large",
    "415": "The body is not JSON (Content-Type)",
    "429": "A rate limit, the address's failed authentications or its requests in "
    "flight exceeded (see Retry-After)",
    "502": "Every attempt at the model's providers failed",
    "503": "Not ready, the state store is unreachable, or no model is eligible now",
    "504": "The request's deadline passed",
    "4XX": "The model's provider refused the request: its status, relayed",
}
# Each front door's error shape: the router's, OpenAI's on /v1, Anthropic's
# on /v1/messages (and on all of /v1 to a caller sending anthropic-version).
SHAPES = {
    "router": t.ErrorBody,
    "openai": t.OpenAIErrorBody | t.AnthropicErrorBody,
    "anthropic": t.AnthropicErrorBody,
}
STRING = {"type": "string"}
# A streamed answer: server-sent events, each the provider's (or translated) chunk.
SSE_EVENT = {
    "type": "object",
    "properties": {"event": STRING, "data": STRING, "id": STRING},
    "required": ["data"],
}
HEADERS = {
    "X-Request-Id": "The request's id (the caller's, or a new one)",
    "X-RateLimit-Limit": "Requests the key may make per window",
    "X-RateLimit-Remaining": "Requests left in this window",
    "X-RateLimit-Reset": "Seconds until the window resets",
    "Retry-After": "Seconds to wait before trying again",
}
RATE_LIMIT_HEADERS = ["X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"]


def error_statuses(route: Route) -> list[int | str]:
    """Every error status a route can answer, from what the app does with it."""
    codes: list[int | str] = [429]  # the client address's requests in flight; the key's rate
    if route.permission is not None:
        codes += [401, 403, 503]  # the key, its role; the store
    if route.body is not None:
        codes += [400, 413, 415]
    if route.query is not None:
        codes.append(400)
    if route.path_params:
        codes.append(404)
    if route.status == 201:
        codes.append(409)
    return list(dict.fromkeys([*codes, *route.errors]))


def build_document(routes: list[Route]) -> dict[str, Any]:
    from ..app import error_shape  # the app imports the route table: not at import time

    described: list[Any] = [*SHAPES.values(), t.Id]
    for route in routes:
        described += [x for x in (route.body, route.query, route.response) if x is not None]
        described += route.path_types.values()
    unique = list(dict.fromkeys(x for d in described for x in _members(d)))
    schemas, components = msgspec.json.schema_components(unique, ref_template=REF)
    schema_of = _SchemaOf(zip(unique, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        error = schema_of[SHAPES[error_shape(route.path, {})]]
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(
            route, schema_of, components, error
        )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "model-router",
            "version": __version__,
            "description": "Routes AI agents' model calls: rules, preferences, budgets, "
            "failover and accounting. Every /api and /v1 route needs "
            "'Authorization: Bearer <key>' (or 'x-api-key: <key>'). Errors come in the "
            "router's shape on /api, "
            "OpenAI's on /v1 and Anthropic's on /v1/messages.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "headers": {
                name: {"description": text, "required": name != "Retry-After", "schema": STRING}
                for name, text in HEADERS.items()
            },
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer"},
                # Anthropic's SDK sends its key so; taken on every route.
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
    }


def _members(described: Any) -> tuple[Any, ...]:
    """A union of Structs as its members (msgspec describes only tagged ones)."""
    return get_args(described) if isinstance(described, types.UnionType) else (described,)


class _SchemaOf(dict[Any, Any]):
    """Each described type's schema; a union of Structs is anyOf its members'."""

    def __missing__(self, described: Any) -> Any:
        if isinstance(described, types.UnionType):
            return {"anyOf": [self[m] for m in get_args(described)]}
        raise KeyError(described)


def _media_schema(media: str, body_schema: Any) -> Any:
    if media == JSON:
        return body_schema
    return SSE_EVENT if media == STREAM_CONTENT_TYPE else STRING


def _headers(*names: str) -> dict[str, Any]:
    """Headers a response always has."""
    return {name: {"$ref": f"#/components/headers/{name}"} for name in names}


def _operation(
    route: Route, schema_of: dict[Any, Any], components: dict[str, Any], error: Any
) -> dict[str, Any]:
    success_headers = _headers("X-Request-Id")
    if route.permission is not None:
        success_headers |= _headers(*RATE_LIMIT_HEADERS)
    body_schema = schema_of[route.response] if route.response is not None else {}
    success = {
        "headers": success_headers,
        "content": {media: {"schema": _media_schema(media, body_schema)} for media in route.media},
    }
    responses: dict[str, Any] = {}
    for status in (route.status, *route.answers):
        responses[str(status)] = {"description": DESCRIPTIONS[str(status)], **success}
    for code in error_statuses(route):
        headers = _headers("X-Request-Id")
        if code in (429, 503):
            headers["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
        content = {JSON: {"schema": error}}
        if str(code) in responses:  # answered with the route's body, or as an error
            content = {JSON: {"schema": {"anyOf": [body_schema, error]}}}
        responses[str(code)] = {
            "description": DESCRIPTIONS[str(code)],
            "headers": headers,
            "content": content,
        }
    op: dict[str, Any] = {
        "summary": route.summary,
        "tags": [route.tag],
        "operationId": route.handler.__name__.strip("_"),
        "parameters": [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": schema_of[route.path_types.get(name, t.Id)],
            }
            for name in route.path_params
        ],
        "responses": responses,
    }
    op["parameters"] += [
        {
            "name": name,
            "in": "header",
            "required": False,
            "description": param.description,
            "schema": {"type": "string", "pattern": f"^{param.pattern.pattern}$"},
        }
        for name, param in route.headers.items()
    ]
    if route.query is not None:
        query = components[route.query.__name__]
        op["parameters"] += [
            {"name": name, "in": "query", "required": False, "schema": schema}
            for name, schema in query["properties"].items()
        ]
    if route.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {JSON: {"schema": schema_of[route.body]}},
        }
    if route.permission is not None:
        op["security"] = [{"bearerAuth": []}, {"apiKey": []}]
        op["x-permission"] = route.permission
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
    Route(
        "GET",
        "/docs",
        docs,
        "Browsable API reference (offline)",
        "meta",
        media=("text/html",),
    ),
]
