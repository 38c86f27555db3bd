"""Routing rules: add, list, get, update, delete. The engine reads them from
the config snapshot; every change is live in every worker within a second."""

from __future__ import annotations

import msgspec

from .. import types as t
from ..catalog import MODELS, RULES, utcnow
from ..http import Request, Response, Route, json_response, not_found
from ..store import Delete, ExpectAbsent, ExpectPresent
from ..telemetry.pii import hex_id
from ..tenancy import rule_visible
from ..validation import raise_problems, rule_problems
from .writes import apply, update


def evaluation_order(rule: t.RoutingRule) -> tuple[int, str, str]:
    """Highest priority first; ties go to the older rule."""
    return (-rule.priority, rule.created_at or "", rule.id)


async def _model_ids(req: Request) -> set[str]:
    return set((await req.service.store.get_all(MODELS.name)).keys())


async def add_rule(req: Request) -> Response:
    body: t.RuleCreate = req.body
    raise_problems(
        rule_problems(body.target_models, body.traffic_split, body.condition, await _model_ids(req))
    )
    now = utcnow()
    fields = msgspec.structs.asdict(body)
    rule = t.RoutingRule(
        **{
            **fields,
            "id": body.id or f"rule-{hex_id(6)}",
            "created_at": now,
            "updated_at": now,
        }
    )
    await apply(req, [ExpectAbsent(RULES.name, rule.id), RULES.put(rule.id, rule)])
    return json_response(rule, 201)


async def list_rules(req: Request) -> Response:
    rules = sorted(
        (r for r in await req.service.catalog.all(RULES) if rule_visible(req, r)),
        key=evaluation_order,
    )
    return json_response(t.Page(data=rules, total=len(rules)))


async def get_rule(req: Request) -> Response:
    rule_id = req.path_params["ruleId"]
    rule = await req.service.catalog.get(RULES, rule_id)
    if rule is None or not rule_visible(req, rule):
        raise not_found("rule", rule_id)
    return json_response(rule)


async def update_rule(req: Request) -> Response:
    rule_id = req.path_params["ruleId"]
    patch: t.RulePatch = req.body
    changes = {
        name: value
        for name, value in msgspec.structs.asdict(patch).items()
        if value is not msgspec.UNSET
    }
    model_ids = await _model_ids(req)

    def change(rule: t.RoutingRule) -> t.RoutingRule:
        new = msgspec.structs.replace(rule, **changes, updated_at=utcnow())
        raise_problems(
            rule_problems(new.target_models, new.traffic_split, new.condition, model_ids)
        )
        return new

    result = await update(req, RULES, [rule_id], change)
    if isinstance(result, str):
        raise not_found("rule", rule_id)
    return json_response(result[0])


async def delete_rule(req: Request) -> Response:
    rule_id = req.path_params["ruleId"]
    await apply(req, [ExpectPresent(RULES.name, rule_id), Delete(RULES.name, rule_id)])
    return json_response(t.Deleted(id=rule_id))


TAG = "routing"
ROUTES = [
    Route(
        "POST",
        "/api/routing/rules",
        add_rule,
        "Add a routing rule",
        TAG,
        "configure",
        body=t.RuleCreate,
        response=t.RoutingRule,
        status=201,
    ),
    Route(
        "GET",
        "/api/routing/rules",
        list_rules,
        "List routing rules in evaluation order",
        TAG,
        "read",
        response=t.Page[t.RoutingRule],
    ),
    Route(
        "GET",
        "/api/routing/rules/{ruleId}",
        get_rule,
        "Get a routing rule",
        TAG,
        "read",
        response=t.RoutingRule,
    ),
    Route(
        "PATCH",
        "/api/routing/rules/{ruleId}",
        update_rule,
        "Update a routing rule (only the fields sent)",
        TAG,
        "configure",
        body=t.RulePatch,
        response=t.RoutingRule,
        errors=(409,),
    ),
    Route(
        "DELETE",
        "/api/routing/rules/{ruleId}",
        delete_rule,
        "Delete a routing rule",
        TAG,
        "configure",
        response=t.Deleted,
    ),
]
