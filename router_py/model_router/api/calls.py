"""Calling models: what every front door shares — routing inputs from the
request, the call itself (whole or streamed), the router's headers and the
accounting of each request — and POST /api/route, the spec's own shape.

The OpenAI-compatible front doors live in openai_api.py, Anthropic's in
anthropic_api.py; all of them build a `Call` and hand it to `answer`.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import msgspec

from .. import types as t
from ..door_calls import failed_at_door
from ..engine.exchanges import Operation
from ..engine.executor import Call, CallCancelled, CallFailed, Result, Usage
from ..engine.inputs import content_length, request_type
from ..engine.secrets import provider_error
from ..http import (
    ApiError,
    CallerWatch,
    HeaderParam,
    Request,
    Response,
    Route,
    json_response,
    new_id,
)
from ..telemetry.logging import Timestamps

_decode = msgspec.json.Decoder().decode
STREAM_CONTENT_TYPE = "text/event-stream"
# What a call can answer besides the app's own errors: no such model (404),
# over budget (402), the provider's refusal relayed (4XX), every attempt
# failed (502), nothing eligible or every breaker open (503), too late (504).
CALL_ERRORS: tuple[int | str, ...] = (400, 402, 404, "4XX", 502, 503, 504)
# What a call whose caller left is accounted as (nobody reads the answer).
CALLER_LEFT = 499


def workspace(req: Request, asked: str | None) -> str | None:
    """A workspace-scoped key routes for its own workspace, and no other."""
    assert req.principal is not None
    workspace = asked or req.principal.workspace_id
    req.principal.authorize("route", workspace)
    return workspace


def caller_user(req: Request, *given: object) -> str | None:
    """The user a request is for: a JWT's subject, else the first user id
    the request names (header, then body)."""
    if req.principal is not None and req.principal.user_id is not None:
        return req.principal.user_id
    return next((g for g in given if isinstance(g, str) and g), None)


def deadline(req: Request, timeout_ms: int | None) -> float:
    settings = req.service.settings
    return time.monotonic() + (timeout_ms or settings.request_timeout_ms) / 1000


# A request's time as utcnow writes it, the date and time of day made once a second.
_timestamp = Timestamps()


def summary(
    req: Request,
    call: Call,
    route: str,
    status: int,
    outcome: str,
    result: Result | None = None,
    attempts: list[t.AttemptReport] | None = None,
    stream: bool = False,
    usage: Usage | None = None,  # with no result: what a call cut short was sent with
) -> t.RecentRequest:
    usage = result.usage if result else usage
    tried = result.attempts if result else attempts or []
    arm = call.arm
    return t.RecentRequest(
        id=new_id(),
        request_id=call.request_id,
        timestamp=_timestamp(time.time()),
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
        attempts=len(tried),
        stream=stream,
        user_id=call.user_id,
        attempt_details=[msgspec.structs.replace(a, error=None) for a in tried],
        experiment_id=arm.rollout_id if arm is not None and arm.experiment else None,
        canary_id=arm.rollout_id if arm is not None and not arm.experiment else None,
        variant=arm.label if arm is not None else None,
    )


def observe_failure(req: Request, call: Call, route: str, failed: CallFailed) -> ApiError:
    """Account a failed call; the error for the caller. Nothing secret leaves:
    every secret the router holds is redacted, and a non-admin caller sees
    only the type and message of a provider's error."""
    req.service.observer.observe(
        summary(req, call, route, failed.status, failed.type, attempts=failed.attempts),
        failed.attempts,
        arm=call.arm,
    )
    details: dict[str, Any] = dict(failed.details or {})
    if failed.attempts:
        details["attempts"] = msgspec.to_builtins(failed.attempts)
    if failed.upstream_body:
        try:
            upstream = _decode(failed.upstream_body)
        except msgspec.DecodeError:
            upstream = failed.upstream_body[:500].decode("utf-8", "replace")
        admin = req.principal is not None and req.principal.role == "admin"
        details["upstream"] = upstream if admin else provider_error(upstream)
    redactor = req.service.redactor
    error = ApiError(
        failed.status,
        failed.type,
        redactor.redact(failed.message),
        redactor.redact_json(details) if details else None,
        failed.headers,
        param=failed.param,
        code=failed.code,
    )
    error.observed = True
    return error


def router_headers(
    req: Request, call: Call, result: Result, attempts: int
) -> list[tuple[str, str]]:
    overhead = (time.perf_counter() - req.started) * 1000 - result.upstream_ms
    headers = [
        ("x-model-router-model", result.model_id),
        ("x-model-router-endpoint", result.endpoint_id),
        ("x-model-router-attempts", str(attempts)),
        ("x-model-router-overhead-ms", f"{max(0.0, overhead):.3f}"),
    ]
    arm = call.arm
    if arm is not None:
        name = "x-model-router-experiment" if arm.experiment else "x-model-router-canary"
        headers += [(name, arm.rollout_id), ("x-model-router-variant", arm.label)]
    return headers


def named_model(req: Request, named: str, not_found: Callable[[str], ApiError]) -> str | None:
    """A request's `model`: a model id or version (-> the model's id), `auto`
    (-> None), or an agent type the router knows (-> None, the agent type
    routes); anything else is not found, never quietly some other model."""
    live = req.service.live
    model_id = live.model_names.get(named)
    if model_id is not None or named == "auto" or named in live.agent_types:
        return model_id
    raise not_found(named)


# Routing inputs carried in headers are held to the rules of the same fields
# in a body: an id's characters and length (a 50 KB workspace id would become
# store keys and log fields).
ROUTING_HEADERS = {
    "x-agent-type": HeaderParam(
        re.compile(r"[^\x00-\x1f]{1,64}"), "The agent type to route for (default: default)"
    ),
    "x-workspace-id": HeaderParam(
        re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}"),
        "The workspace the call is for (a workspace-scoped key's own by default)",
    ),
    "x-user-id": HeaderParam(
        re.compile(r"[^\x00-\x1f]{1,256}"), "The end user, for routing rules and the logs"
    ),
}


def _header(req: Request, name: str) -> str | None:
    value = req.headers.get(name, "")
    if not value:
        return None
    if ROUTING_HEADERS[name].pattern.fullmatch(value) is None:
        raise ApiError(
            400,
            "invalid_request_error",
            f"header {name} is not a valid value",
            {"in": "header", "field": name},
            param=name,
        )
    return value


def routing_headers(req: Request) -> tuple[str, str | None, str | None]:
    """(agent type, workspace, user) from the X-Agent-Type, X-Workspace-Id and
    X-User-Id headers, checked like the same fields of a body."""
    return (
        _header(req, "x-agent-type") or "default",
        workspace(req, _header(req, "x-workspace-id")),
        _header(req, "x-user-id"),
    )


async def answer(
    req: Request, call: Call, route: str, stream: bool, prompt: str | None = None
) -> Response:
    """Call the model and answer with its reply, whole or streamed, in the
    front door's format (the exchange translated it); account the request."""
    executor = req.service.executor
    if stream:
        try:
            result, chunks = await executor.stream(call)
        except CallFailed as failed:
            raise observe_failure(req, call, route, failed) from None
        # The attempt that streams is recorded when the stream ends.
        headers = router_headers(req, call, result, len(result.attempts) + 1)
        response = Response(b"", 200, STREAM_CONTENT_TYPE, headers)
        response.stream = await _Begun.begin(_observed_stream(req, call, route, result, chunks))
        return response
    result = await complete(req, call, route)
    assert result.answer is not None
    req.service.observer.observe(
        summary(req, call, route, 200, "success", result),
        result.attempts,
        prompt,
        result.answer.text,
        call.arm,
    )
    response = Response(result.answer.body)
    response.headers += router_headers(req, call, result, len(result.attempts))
    return response


async def complete(req: Request, call: Call, route: str) -> Result:
    """The whole answer to a call. A failed call is accounted and its error
    raised; a call whose caller leaves first is cancelled, its upstream call
    closed, and accounted with nginx's 499 ("client closed request"). Its
    attempts stay out of the call's canary or experiment tally: a caller
    leaving says nothing of the model."""
    executor = req.service.executor
    if req.door_tries is not None:  # the door made the attempts; none is made again
        raise observe_failure(req, call, route, failed_at_door(executor, req.door_tries))
    watch: CallerWatch | None = None
    try:
        admitted = await executor.admit(call)
        # Once admitted: a cancel while holds are being taken could leave one behind.
        watch = CallerWatch(req)
        return await executor.complete(call, admitted)
    except CallFailed as failed:
        raise observe_failure(req, call, route, failed) from None
    except CallCancelled as cut:
        task = asyncio.current_task()
        # Not the caller's cancel, or not only its (the server stopping too): it goes on.
        if watch is None or not watch.left or (task is not None and task.uncancel()):
            raise
        tried, usage = cut.attempts, cut.usage
        left = summary(req, call, route, CALLER_LEFT, "cancelled", attempts=tried, usage=usage)
        if tried:  # the model and endpoint it was cut short at
            last = tried[-1]
            left = msgspec.structs.replace(
                left,
                model_id=last.model_id,
                endpoint_id=last.endpoint_id,
                upstream_ms=round(cut.upstream_ms, 3),
            )
        req.service.observer.observe(left, tried)
        error = ApiError(CALLER_LEFT, "client_closed_request", "the caller left before the answer")
        error.observed = True
        raise error from None
    finally:
        if watch is not None:
            watch.close()


async def _observed_stream(
    req: Request, call: Call, route: str, result: Result, chunks: AsyncIterator[bytes]
) -> AsyncGenerator[bytes, None]:
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
        outcome = result.attempts[-1].outcome if result.attempts else "success"
        req.service.observer.observe(
            summary(req, call, route, 200, outcome, result, stream=True),
            result.attempts,
            arm=call.arm,
        )


class _Begun:
    """A response stream begun up to its first chunk (in memory already: the
    executor read up to the first content). An async generator closed before
    its first step runs none of its code, so a stream whose response never
    started (`app._closed_if_unsent`) would leave its upstream call, holds
    and accounting to the garbage collector; begun, closing it at any point
    runs its cleanup."""

    def __init__(self, chunks: AsyncGenerator[bytes, None], first: bytes | None):
        self._chunks, self._first = chunks, first

    @classmethod
    async def begin(cls, chunks: AsyncGenerator[bytes, None]) -> _Begun:
        return cls(chunks, await anext(chunks, None))

    def __aiter__(self) -> _Begun:
        return self

    async def __anext__(self) -> bytes:
        first, self._first = self._first, None
        return first if first is not None else await self._chunks.__anext__()

    async def aclose(self) -> None:
        await self._chunks.aclose()


# --- POST /api/route -------------------------------------------------------------


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
        workspace_id=workspace(req, body.workspace_id),
        user_id=caller_user(req, body.user_id),
        request_type=request_type(None, body.metadata),
        operation=Operation.CHAT,
        raw=msgspec.json.encode(chat),
        body=chat,
        content_length=content_length(body.prompt, body.messages),
        deadline=deadline(req, body.timeout_ms),
        model=body.model,
        capabilities=body.capabilities or None,
        metadata=body.metadata,
    )
    result = await complete(req, call, "/api/route")
    assert result.answer is not None
    done = summary(req, call, "/api/route", 200, "success", result)
    req.service.observer.observe(done, result.attempts, body.prompt, result.answer.text, call.arm)
    response = json_response(
        t.RouteResponse(
            id=f"response-{new_id()}",
            request_id=call.request_id,
            model_id=result.model_id,
            endpoint_id=result.endpoint_id,
            response=result.answer.text,
            usage=t.RouteUsage(
                prompt_tokens=result.usage.prompt_tokens,
                completion_tokens=result.usage.completion_tokens,
                total_tokens=result.usage.prompt_tokens + result.usage.completion_tokens,
                cost=result.usage.cost_nanos / 1e9,
                estimated=result.usage.estimated,
            ),
            latency=round(done.latency_ms),
            status="success",
            timestamp=done.timestamp,
            attempts=result.attempts,
            finish_reason=result.answer.finish_reason,
            experiment_id=done.experiment_id,
            canary_id=done.canary_id,
            variant=done.variant,
        )
    )
    response.headers += router_headers(req, call, result, len(result.attempts))
    return response


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
        errors=CALL_ERRORS,
    ),
]
