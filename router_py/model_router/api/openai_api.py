"""OpenAI's API as a front door: chat completions, legacy completions,
embeddings, the Responses API, and the model list — what OpenAI's SDK,
LangChain, LlamaIndex and litellm call. `model` names a model (id or
version), `auto`, or a known agent type; X-Agent-Type, X-Workspace-Id and
X-User-Id carry the other routing inputs. Errors use OpenAI's shape.

The model list speaks Anthropic's shape to a caller that sends
`anthropic-version` (Anthropic's SDK lists models at the same path).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec

from .. import types as t
from ..engine.exchanges import Operation
from ..engine.executor import Call
from ..engine.inputs import content_length
from ..http import JSON, ApiError, Request, Response, Route, json_response, too_deep
from ..tenancy import model_visible
from .calls import (
    CALL_ERRORS,
    ROUTING_HEADERS,
    STREAM_CONTENT_TYPE,
    answer,
    caller_user,
    deadline,
    named_model,
    routing_headers,
)


def model_not_found(named: str) -> ApiError:
    return ApiError(
        404,
        "invalid_request_error",
        f"The model '{named}' does not exist: name a registered model (id or version), "
        "'auto', or an agent type with preferences or rules",
        param="model",
        code="model_not_found",
    )


def decode_body(req: Request, shape: type[Any]) -> tuple[dict[str, Any], Any]:
    """(the body as sent, the fields the router reads, checked)."""
    try:
        raw = msgspec.json.decode(req.raw_body)
        return raw, msgspec.convert(raw, shape)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ApiError(400, "invalid_request_error", f"invalid body: {exc}") from None
    except RecursionError:
        raise too_deep() from None


def _text_length(value: Any) -> int:
    """Characters of the text in a prompt, input or message list, as far as
    it is text (the content-length rule condition and token estimates)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_text_length(v) for v in value)
    if isinstance(value, dict):
        return _text_length(value.get("content", value.get("text")))
    return 0


async def _call(
    req: Request,
    shape: type[Any],
    operation: Operation,
    request_type: str,
    route: str,
    length: Callable[[Any], int],
) -> Response:
    raw, checked = decode_body(req, shape)
    agent, workspace_id, user = routing_headers(req)
    model = named_model(req, checked.model, model_not_found)
    if model is None and checked.model != "auto":
        agent = checked.model  # an agent type
    user_field = raw.get("user")
    call = Call(
        request_id=req.request_id,
        agent_type=agent,
        workspace_id=workspace_id,
        user_id=caller_user(req, user, user_field),
        request_type=request_type,
        operation=operation,
        raw=req.raw_body,
        body=raw,
        content_length=length(checked),
        deadline=deadline(req, None),
        model=model,
    )
    return await answer(req, call, route, getattr(checked, "stream", False))


async def chat_completions(req: Request) -> Response:
    return await _call(
        req,
        t.ChatCompletionRequest,
        Operation.CHAT,
        "chat",
        "/v1/chat/completions",
        lambda c: content_length(None, c.messages),
    )


async def completions(req: Request) -> Response:
    return await _call(
        req,
        t.TextCompletionRequest,
        Operation.COMPLETIONS,
        "completion",
        "/v1/completions",
        lambda c: _text_length(c.prompt),
    )


async def embeddings(req: Request) -> Response:
    return await _call(
        req,
        t.EmbeddingRequest,
        Operation.EMBEDDINGS,
        "embedding",
        "/v1/embeddings",
        lambda c: _text_length(c.input),
    )


async def responses(req: Request) -> Response:
    return await _call(
        req,
        t.ResponsesRequest,
        Operation.RESPONSES,
        "chat",
        "/v1/responses",
        lambda c: _text_length(c.input) + _text_length(c.instructions),
    )


def _openai_entry(model: t.SnapshotModel) -> t.OpenAIModel:
    return t.OpenAIModel(model.id, "model", 0, model.provider)


def _anthropic_entry(model: t.SnapshotModel) -> t.AnthropicModel:
    return t.AnthropicModel("model", model.id, model.id, "1970-01-01T00:00:00Z")


def _wants_anthropic(req: Request) -> bool:
    return "anthropic-version" in req.headers


async def list_openai_models(req: Request) -> Response:
    models = sorted(
        (
            m
            for m in req.service.live.models.values()
            if m.status == "active" and model_visible(req, m.id)
        ),
        key=lambda m: m.id,
    )
    if _wants_anthropic(req):
        data = [_anthropic_entry(m) for m in models]
        first, last = (data[0].id, data[-1].id) if data else (None, None)
        return json_response(t.AnthropicModelList(data, False, first, last))
    auto = t.OpenAIModel("auto", "model", int(time.time()), "model-router")
    return json_response(t.OpenAIModelList("list", [auto, *map(_openai_entry, models)]))


async def get_openai_model(req: Request) -> Response:
    named = req.path_params["model"]
    live = req.service.live
    model_id = live.model_names.get(named)
    if model_id is None or not model_visible(req, model_id):
        raise model_not_found(named)
    model = live.models[model_id]
    return json_response(_anthropic_entry(model) if _wants_anthropic(req) else _openai_entry(model))


def _post(path: str, handler: Any, summary: str, body: type[Any]) -> Route:
    streams = "stream" in body.__struct_fields__
    return Route(
        "POST",
        path,
        handler,
        summary,
        "openai",
        "route",
        body=body,
        raw_body=True,
        errors=CALL_ERRORS,
        headers=ROUTING_HEADERS,
        media=(JSON, STREAM_CONTENT_TYPE) if streams else (JSON,),
    )


ROUTES = [
    _post(
        "/v1/chat/completions",
        chat_completions,
        "OpenAI-compatible chat completions; model: a model id, 'auto' or an agent type",
        t.ChatCompletionRequest,
    ),
    _post(
        "/v1/completions",
        completions,
        "OpenAI-compatible legacy text completions, for models of type completion",
        t.TextCompletionRequest,
    ),
    _post(
        "/v1/embeddings",
        embeddings,
        "OpenAI-compatible embeddings, for models of type embedding",
        t.EmbeddingRequest,
    ),
    _post(
        "/v1/responses",
        responses,
        "OpenAI's Responses API, passed through to OpenAI-style chat endpoints",
        t.ResponsesRequest,
    ),
    Route(
        "GET",
        "/v1/models",
        list_openai_models,
        "The active models (OpenAI's or Anthropic's shape)",
        "openai",
        "read",
        response=t.OpenAIModelList | t.AnthropicModelList,
    ),
    Route(
        "GET",
        "/v1/models/{model}",
        get_openai_model,
        "One model by id or version",
        "openai",
        "read",
        response=t.OpenAIModel | t.AnthropicModel,
    ),
]
