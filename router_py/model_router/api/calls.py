"""Calling models: POST /api/route (the spec's shape) and the OpenAI-compatible
POST /v1/chat/completions and GET /v1/models."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from .. import types as t
from ..catalog import utcnow
from ..engine.executor import Call, CallFailed, Result
from ..engine.inputs import content_length, request_type
from ..http import ApiError, Request, Response, Route, json_response, new_id

_decode = msgspec.json.Decoder().decode


def _workspace(req: Request, asked: str | None) -> str | None:
    """A workspace-scoped key routes for its own workspace, and no other."""
    assert req.principal is not None
    workspace = asked or req.principal.workspace_id
    req.principal.authorize("route", workspace)
    return workspace


def _deadline(req: Request, timeout_ms: int | None) -> float:
    settings = req.service.settings
    return time.monotonic() + (timeout_ms or settings.request_timeout_ms) / 1000


def _summary(
    req: Request,
    call: Call,
    route: str,
    status: int,
    outcome: str,
    result: Result | None = None,
    attempts: int = 0,
    stream: bool = False,
) -> t.RecentRequest:
    usage = result.usage if result else None
    return t.RecentRequest(
        id=new_id(),
        request_id=call.request_id,
        timestamp=utcnow(),
        route=route,
        workspace_id=call.workspace_id,
        agent_type=call.agent_type,
        model_id=result.model_id if result else None,
        endpoint_id=result.endpoint_id if result else None,
        status=status,
        outcome=outcome,
        latency_ms=round((time.perf_counter() - req.started) * 1000, 3),
        upstream_ms=round(result.upstream_ms, 3) if result else 0.0,
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
        cost=usage.cost_nanos / 1e9 if usage else 0.0,
        estimated=usage.estimated if usage else False,
        attempts=len(result.attempts) if result else attempts,
        stream=stream,
    )


def _observe_failure(req: Request, call: Call, route: str, failed: CallFailed) -> ApiError:
    req.service.observer.observe(
        _summary(req, call, route, failed.status, failed.type, attempts=len(failed.attempts)),
        failed.attempts,
    )
    details: dict[str, Any] = dict(failed.details or {})
    if failed.attempts:
        details["attempts"] = msgspec.to_builtins(failed.attempts)
    if failed.upstream_body:
        try:
            details["upstream"] = _decode(failed.upstream_body)
        except msgspec.DecodeError:
            details["upstream"] = failed.upstream_body[:500].decode("utf-8", "replace")
    return ApiError(failed.status, failed.type, failed.message, details or None)


def _router_headers(req: Request, result: Result) -> list[tuple[str, str]]:
    overhead = (time.perf_counter() - req.started) * 1000 - result.upstream_ms
    return [
        ("x-model-router-model", result.model_id),
        ("x-model-router-endpoint", result.endpoint_id),
        ("x-model-router-attempts", str(len(result.attempts))),
        ("x-model-router-overhead-ms", f"{max(0.0, overhead):.3f}"),
    ]


async def route_request(req: Request) -> Response:
    body: t.RouteRequest = req.body
    if (body.prompt is None) == (body.messages is None):
        raise ApiError(
            400,
            "validation_error",
            "send exactly one of prompt and messages",
            {"in": "body", "field": "prompt"},
        )
    messages = body.messages or [{"role": "user", "content": body.prompt}]
    p = body.parameters
    chat: dict[str, Any] = {"messages": messages}
    for name, value in (
        ("temperature", p.temperature),
        ("max_tokens", p.max_tokens),
        ("top_p", p.top_p),
        ("stop", p.stop),
        ("presence_penalty", p.presence_penalty),
        ("frequency_penalty", p.frequency_penalty),
    ):
        if value is not None:
            chat[name] = value
    call = Call(
        request_id=body.id or req.request_id,
        agent_type=body.agent_type,
        workspace_id=_workspace(req, body.workspace_id),
        user_id=body.user_id,
        request_type=request_type(None, body.metadata),
        chat=chat,
        content_length=content_length(body.prompt, body.messages),
        deadline=_deadline(req, body.timeout_ms),
        model=body.model,
        capabilities=body.capabilities or None,
        metadata=body.metadata,
    )
    try:
        result = await req.service.executor.complete(call)
    except CallFailed as failed:
        raise _observe_failure(req, call, "/api/route", failed) from None
    assert result.completion is not None
    summary = _summary(req, call, "/api/route", 200, "success", result)
    req.service.observer.observe(summary, result.attempts, body.prompt, result.completion.text)
    response = json_response(
        t.RouteResponse(
            id=f"response-{new_id()}",
            request_id=call.request_id,
            model_id=result.model_id,
            endpoint_id=result.endpoint_id,
            response=result.completion.text,
            usage=t.RouteUsage(
                prompt_tokens=result.usage.prompt_tokens,
                completion_tokens=result.usage.completion_tokens,
                total_tokens=result.usage.prompt_tokens + result.usage.completion_tokens,
                cost=result.usage.cost_nanos / 1e9,
                estimated=result.usage.estimated,
            ),
            latency=round(summary.latency_ms),
            status="success",
            timestamp=summary.timestamp,
            attempts=result.attempts,
            finish_reason=result.completion.finish_reason,
        )
    )
    response.headers += _router_headers(req, result)
    return response


def _chat_call(req: Request) -> tuple[Call, dict[str, Any], t.ChatCompletionRequest]:
    try:
        raw = _decode(req.raw_body)
        checked = msgspec.convert(raw, t.ChatCompletionRequest)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ApiError(400, "invalid_request_error", f"invalid body: {exc}") from None
    headers = req.headers
    live = req.service.live
    named = checked.model
    agent = headers.get("x-agent-type", "") or "default"
    requested = named if named in live.model_names else None
    if requested is None and named != "auto":
        agent = named  # neither a model nor auto: an agent type
    metadata: dict[str, Any] = {}
    call = Call(
        request_id=req.request_id,
        agent_type=agent,
        workspace_id=_workspace(req, headers.get("x-workspace-id", "") or None),
        user_id=headers.get("x-user-id", "") or raw.get("user") or None,
        request_type="chat",
        chat={k: v for k, v in raw.items() if k != "model"},
        content_length=content_length(None, checked.messages),
        deadline=_deadline(req, None),
        model=requested,
        metadata=metadata,
    )
    return call, raw, checked


async def chat_completions(req: Request) -> Response:
    call, raw, checked = _chat_call(req)
    route = "/v1/chat/completions"
    executor = req.service.executor
    if checked.stream:
        try:
            result, chunks = await executor.stream(call)
        except CallFailed as failed:
            raise _observe_failure(req, call, route, failed) from None
        response = Response(b"", 200, "text/event-stream", _router_headers(req, result))
        response.stream = _observed_stream(req, call, route, result, chunks)
        return response
    try:
        result = await executor.complete(call)
    except CallFailed as failed:
        raise _observe_failure(req, call, route, failed) from None
    assert result.completion is not None
    prompt = " ".join(str(m.get("content")) for m in checked.messages) if checked.messages else None
    req.service.observer.observe(
        _summary(req, call, route, 200, "success", result),
        result.attempts,
        prompt,
        result.completion.text,
    )
    response = Response(result.completion.body)
    response.headers += _router_headers(req, result)
    return response


async def _observed_stream(
    req: Request, call: Call, route: str, result: Result, chunks: AsyncIterator[bytes]
) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
        outcome = result.attempts[-1].outcome if result.attempts else "success"
        req.service.observer.observe(
            _summary(req, call, route, 200, outcome, result, stream=True), result.attempts
        )


async def openai_models(req: Request) -> Response:
    live = req.service.live
    created = int(time.time())
    data = [{"id": "auto", "object": "model", "created": created, "owned_by": "model-router"}]
    data += [
        {"id": m.id, "object": "model", "created": created, "owned_by": m.provider}
        for m in sorted(live.models.values(), key=lambda m: m.id)
        if m.status == "active"
    ]
    return json_response({"object": "list", "data": data})


ROUTES = [
    Route(
        "POST",
        "/api/route",
        route_request,
        "Route a request: decide, call the model (failing over), account it",
        "calls",
        "route",
        body=t.RouteRequest,
        response=t.RouteResponse,
    ),
    Route(
        "POST",
        "/v1/chat/completions",
        chat_completions,
        "OpenAI-compatible chat completions; model: a model id, 'auto' or an agent type",
        "openai",
        "route",
        body=t.ChatCompletionRequest,
        raw_body=True,
    ),
    Route(
        "GET",
        "/v1/models",
        openai_models,
        "OpenAI-compatible list of the active models",
        "openai",
        "read",
    ),
]
