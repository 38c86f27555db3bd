"""Agent preferences and workspace configs: one document per agent type or
workspace, set whole by POST and read back by GET."""

from __future__ import annotations

import msgspec

from .. import types as t
from ..catalog import AGENTS, MODELS, WORKSPACES, utcnow
from ..http import Request, Response, Route, json_response, not_found
from ..validation import path_id, preference_problems, raise_problems
from .writes import put_whole


async def set_preferences(req: Request) -> Response:
    agent_type = path_id(req.path_params["agentType"], "agentType")
    body: t.AgentPreferencesBody = req.body
    model_ids = set((await req.service.store.get_all(MODELS.name)).keys())
    raise_problems(preference_problems(body, model_ids))
    prefs = t.AgentPreferences(
        agent_type=agent_type, updated_at=utcnow(), **msgspec.structs.asdict(body)
    )
    return await put_whole(req, AGENTS, agent_type, prefs)


async def get_preferences(req: Request) -> Response:
    agent_type = req.path_params["agentType"]
    prefs = await req.service.catalog.get(AGENTS, agent_type)
    if prefs is None:
        raise not_found("agentType", agent_type)
    return json_response(prefs)


async def set_workspace_config(req: Request) -> Response:
    workspace_id = path_id(req.path_params["workspaceId"], "workspaceId")
    body: t.WorkspaceConfigBody = req.body
    config = t.WorkspaceConfig(
        workspace_id=workspace_id, updated_at=utcnow(), **msgspec.structs.asdict(body)
    )
    return await put_whole(req, WORKSPACES, workspace_id, config)


async def get_workspace_config(req: Request) -> Response:
    workspace_id = req.path_params["workspaceId"]
    config = await req.service.catalog.get(WORKSPACES, workspace_id)
    if config is None:
        raise not_found("workspace", workspace_id)
    return json_response(config)


ROUTES = [
    Route(
        "POST",
        "/api/agents/{agentType}/preferences",
        set_preferences,
        "Set an agent type's model preferences",
        "agents",
        "configure",
        body=t.AgentPreferencesBody,
        response=t.AgentPreferences,
        answers=(201,),
    ),
    Route(
        "GET",
        "/api/agents/{agentType}/preferences",
        get_preferences,
        "Get an agent type's model preferences",
        "agents",
        "read",
        response=t.AgentPreferences,
    ),
    Route(
        "POST",
        "/api/workspaces/{workspaceId}/config",
        set_workspace_config,
        "Set a workspace's restrictions, budgets and requirements",
        "workspaces",
        "configure_workspace",
        body=t.WorkspaceConfigBody,
        response=t.WorkspaceConfig,
        answers=(201,),
    ),
    Route(
        "GET",
        "/api/workspaces/{workspaceId}/config",
        get_workspace_config,
        "Get a workspace's config",
        "workspaces",
        "read",
        response=t.WorkspaceConfig,
    ),
]
