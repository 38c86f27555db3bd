"""What a workspace-scoped caller may see: the rules whose conditions can
match its workspace, and the models it may use (its `modelRestrictions`,
when it has any). Anything else answers as if it did not exist, so a scoped
key cannot learn what other workspaces route to or where their endpoints are.
Unscoped keys see everything."""

from __future__ import annotations

from . import types as t
from .http import Request


def scope(req: Request) -> str | None:
    return req.principal.workspace_id if req.principal is not None else None


def rule_visible(req: Request, rule: t.RoutingRule) -> bool:
    workspace, allowed = scope(req), rule.condition.workspace_id
    return workspace is None or allowed is None or workspace in allowed


def model_visible(req: Request, model_id: str) -> bool:
    workspace = scope(req)
    if workspace is None:
        return True
    config = req.service.live.workspaces.get(workspace)
    restrictions = config.model_restrictions if config is not None else None
    return not restrictions or model_id in restrictions
