"""Routing decisions without calling anything: /api/routing/test, and the
models an agent would use now."""

from __future__ import annotations

from .. import types as t
from .._core import Decision
from ..engine.inputs import ERROR_STATUS, content_length, error_details, request_type
from ..http import Permission, Request, Response, Route, json_response
from .calls import caller_user


def _outcome(decision: Decision) -> t.DecisionOutcome:
    if decision.error is None:
        return t.DecisionOutcome(status=200)
    kind, message = decision.error
    return t.DecisionOutcome(
        status=ERROR_STATUS[kind], type=kind, message=message, details=error_details(decision)
    )


def _report(req: Request, decision: Decision, rtype: str, length: int) -> t.RoutingDecision:
    return t.RoutingDecision(
        source=decision.source,
        rule=(
            t.RuleRef(id=decision.rule_id, name=decision.rule_name or "")
            if decision.rule_id
            else None
        ),
        candidates=[
            t.RankedCandidate(rank=i + 1, model_id=model, endpoints=endpoints, reason=reason)
            for i, ((model, endpoints), reason) in enumerate(
                zip(decision.candidates, decision.reasons, strict=True)
            )
        ],
        excluded=[t.ExcludedModel(model_id=m, reason=why) for m, why in decision.excluded],
        outcome=_outcome(decision),
        failed_open=decision.failed_open,
        request_type=rtype,
        content_length=length,
        config_version=req.service.live.version,
    )


def _scoped_workspace(req: Request, workspace_id: str | None, permission: Permission) -> str | None:
    """A workspace-scoped key decides for its own workspace by default, and
    for no other."""
    assert req.principal is not None
    workspace_id = workspace_id or req.principal.workspace_id
    req.principal.authorize(permission, workspace_id)
    return workspace_id


async def test_routing(req: Request) -> Response:
    body: t.RoutingTestRequest = req.body
    workspace_id = _scoped_workspace(req, body.workspace_id, "route")
    rtype = request_type(body.request_type, body.metadata)
    length = (
        body.content_length
        if body.content_length is not None
        else content_length(body.prompt, body.messages)
    )
    decision = req.service.live.engine.decide(
        body.agent_type,
        workspace_id=workspace_id,
        user_id=caller_user(req, body.user_id),
        request_type=rtype,
        content_length=length,
        capabilities=body.capabilities,
        model=body.model,
        metadata=body.metadata,
        explain=True,
    )
    return json_response(_report(req, decision, rtype, length))


async def agent_models(req: Request) -> Response:
    q: t.AgentModelsQuery = req.query
    workspace_id = _scoped_workspace(req, q.workspace_id, "read")
    decision = req.service.live.engine.decide(
        req.path_params["agentType"],
        workspace_id=workspace_id,
        request_type=q.request_type,
        explain=True,
    )
    return json_response(_report(req, decision, q.request_type, 0))


ROUTES = [
    Route(
        "POST",
        "/api/routing/test",
        test_routing,
        "The routing decision for a request, with reasons, without calling anything",
        "routing",
        "route",
        body=t.RoutingTestRequest,
        response=t.RoutingDecision,
    ),
    Route(
        "GET",
        "/api/agents/{agentType}/models",
        agent_models,
        "The models an agent type would use now, in order",
        "agents",
        "read",
        query=t.AgentModelsQuery,
        response=t.RoutingDecision,
        path_types={"agentType": t.Tag},
    ),
]
