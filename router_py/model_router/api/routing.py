"""Routing decisions without calling anything: /api/routing/test, and the
models an agent would use now."""

from __future__ import annotations

from .. import types as t
from .._core import Decision
from ..engine.inputs import ERROR_STATUS, content_length, error_details, request_type
from ..experiments.routing import Arm, Candidates
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


def _show_assignment(
    report: t.RoutingDecision, decision: Decision, arm: Arm, candidates: Candidates
) -> None:
    """The report as /api/route would act: the arm's model first, with why
    (when it cannot take the call now, the request is the arm's failure and
    routes on), and the canary or experiment named."""
    why = dict(zip((m for m, _ in decision.candidates), decision.reasons, strict=True))
    if candidates and candidates[0][0] == arm.model_id:
        rollout = f"{'experiment' if arm.experiment else 'canary'} {arm.rollout_id}"
        reasons = (f"{rollout}, variant {arm.label}", why.get(arm.model_id))
        why[arm.model_id] = "; ".join(r for r in reasons if r)
    report.candidates = [
        t.RankedCandidate(rank=i + 1, model_id=m, endpoints=e, reason=why.get(m, ""))
        for i, (m, e) in enumerate(candidates)
    ]
    report.experiment_id = arm.rollout_id if arm.experiment else None
    report.canary_id = None if arm.experiment else arm.rollout_id
    report.variant = arm.label


async def test_routing(req: Request) -> Response:
    body: t.RoutingTestRequest = req.body
    workspace_id = _scoped_workspace(req, body.workspace_id, "route")
    rtype = request_type(body.request_type, body.metadata)
    length = (
        body.content_length
        if body.content_length is not None
        else content_length(body.prompt, body.messages)
    )
    user_id = caller_user(req, body.user_id)
    engine = req.service.live.engine

    def decide(model: str | None, limit: int | None = None) -> Decision:
        return engine.decide(
            body.agent_type,
            workspace_id=workspace_id,
            user_id=user_id,
            request_type=rtype,
            content_length=length,
            capabilities=body.capabilities,
            model=model,
            metadata=body.metadata,
            explain=True,
            limit=limit,
        )

    decision = decide(body.model)
    report = _report(req, decision, rtype, length)
    rollouts = req.service.live.rollouts
    if rollouts is None or body.model is not None or decision.error is not None:
        return json_response(report)

    def candidate(model_id: str) -> tuple[str, list[str]] | None:
        only = decide(model_id, 1)
        return None if only.error is not None else only.candidates[0]

    request_id = body.id or req.request_id
    assigned = rollouts.assign(
        decision, request_id, body.agent_type, workspace_id, user_id, candidate
    )
    if assigned is not None:
        _show_assignment(report, decision, *assigned)
    return json_response(report)


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
