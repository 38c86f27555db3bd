"""Anthropic's Messages API as a front door: what the `anthropic` SDK and
Claude Code call. Keys come in `x-api-key` or `Authorization: Bearer`;
`anthropic-version` and `anthropic-beta` are accepted and passed on to
Anthropic endpoints. Routed like any other request: to an Anthropic model
the body passes through as sent (thinking, cache_control, metadata and all);
to an OpenAI-style model it is translated both ways. Errors use Anthropic's
shape.
"""

from __future__ import annotations

import time
from typing import Any

from .. import types as t
from .._core import same_format_body
from ..engine.exchanges import Format, Operation
from ..engine.executor import Call, CallFailed
from ..engine.inputs import content_length
from ..engine.providers import ADAPTERS, ANTHROPIC_HEADERS
from ..engine.translate import Refused, text_of
from ..engine.upstream import Deadlines, UpstreamRequest
from ..http import JSON, ApiError, Request, Response, Route
from .calls import (
    CALL_ERRORS,
    ROUTING_HEADERS,
    STREAM_CONTENT_TYPE,
    answer,
    caller_user,
    deadline,
    named_model,
    observe_failure,
    routing_headers,
)
from .openai_api import decode_body

ROUTE = "/v1/messages"


def model_not_found(named: str) -> ApiError:
    return ApiError(404, "not_found_error", f"model: {named}", param="model")


def _call(
    req: Request, checked: t.MessagesRequest | t.CountTokensRequest, raw: dict[str, Any]
) -> Call:
    agent, workspace_id, user = routing_headers(req)
    model = named_model(req, checked.model, model_not_found)
    if model is None and checked.model != "auto":
        agent = checked.model
    system = raw.get("system")
    length = content_length(None, checked.messages)
    if system is not None:
        try:
            length += len(text_of(system, "system"))
        except Refused:
            pass  # translation names the field if it matters
    metadata = raw.get("metadata")
    user_id = metadata.get("user_id") if isinstance(metadata, dict) else None
    return Call(
        request_id=req.request_id,
        agent_type=agent,
        workspace_id=workspace_id,
        user_id=caller_user(req, user, user_id),
        request_type="chat",
        operation=Operation.MESSAGES,
        raw=req.raw_body,
        body=raw,
        content_length=length,
        deadline=deadline(req, None),
        model=model,
        forwarded={k: v for k, v in req.headers.items() if k in ANTHROPIC_HEADERS},
    )


async def messages(req: Request) -> Response:
    raw, checked = decode_body(req, t.MessagesRequest)
    return await answer(req, _call(req, checked, raw), ROUTE, checked.stream)


async def count_tokens(req: Request) -> Response:
    """Anthropic's own count, from the Anthropic endpoint the request would
    be routed to; no estimate passed off as a count."""
    raw, checked = decode_body(req, t.CountTokensRequest)
    call = _call(req, checked, raw)
    executor = req.service.executor
    try:
        decision = executor.decide(call)
    except CallFailed as failed:
        raise observe_failure(req, call, f"{ROUTE}/count_tokens", failed) from None
    live = req.service.live
    for model_id, endpoint_ids in decision.candidates:
        model = live.models[model_id]
        adapter = ADAPTERS[model.provider]
        if adapter.format is not Format.ANTHROPIC or not endpoint_ids:
            continue
        endpoint = live.endpoints[endpoint_ids[0]]
        url = endpoint.url.partition("?")[0].rstrip("/") + "/count_tokens"
        try:
            body = same_format_body(call.raw, model.version, [])
        except ValueError as exc:  # read otherwise by the core than by the front door
            raise ApiError(400, "invalid_request_error", str(exc)) from None
        request = UpstreamRequest(url, adapter.headers(endpoint, call.forwarded), body)
        try:
            deadlines = Deadlines.within(call.deadline - time.monotonic())
            upstream = await executor.client.send(request, deadlines)
        except (OSError, TimeoutError) as exc:
            raise ApiError(502, "api_error", f"count_tokens failed upstream: {exc}") from None
        if upstream.status >= 500:  # the provider's fault, not the caller's: a gateway error
            raise ApiError(502, "api_error", f"count_tokens failed upstream ({upstream.status})")
        relayed = req.service.redactor.redact(upstream.body.decode("utf-8", "replace"))
        return Response(relayed.encode(), upstream.status)
    raise ApiError(
        404,
        "not_found_error",
        "count_tokens is offered for requests routed to Anthropic models only",
    )


ROUTES = [
    Route(
        "POST",
        ROUTE,
        messages,
        "Anthropic's Messages API; model: a model id, 'auto' or an agent type",
        "anthropic",
        "route",
        body=t.MessagesRequest,
        raw_body=True,
        errors=CALL_ERRORS,
        headers=ROUTING_HEADERS,
        media=(JSON, STREAM_CONTENT_TYPE),
    ),
    Route(
        "POST",
        f"{ROUTE}/count_tokens",
        count_tokens,
        "Anthropic's token count, from the Anthropic model the request routes to",
        "anthropic",
        "route",
        body=t.CountTokensRequest,
        raw_body=True,
        errors=CALL_ERRORS,
        headers=ROUTING_HEADERS,
    ),
]
