"""API keys: an admin creates, lists and revokes them. The secret is returned
once, at creation; only its hash is stored. Any caller may ask what its own
token is (/api/me)."""

from __future__ import annotations

import msgspec

from .. import auth
from .. import types as t
from ..catalog import KEYS, utcnow
from ..http import Request, Response, Route, json_response
from ..store import Delete, ExpectPresent
from .writes import apply


def key_info(record: t.ApiKey) -> t.KeyInfo:
    return t.KeyInfo(
        id=record.id,
        role=record.role,
        workspace_id=record.workspace_id,
        name=record.name,
        created_at=record.created_at,
    )


async def create_key(req: Request) -> Response:
    body: t.KeyCreate = req.body
    key, record = auth.mint_key(body.role, body.workspace_id, body.name, utcnow())
    await req.service.catalog.apply([KEYS.put(record.id, record)])
    info = key_info(record)
    return json_response(
        t.KeyCreated(**msgspec.structs.asdict(info), key=key),
        201,
    )


async def list_keys(req: Request) -> Response:
    keys = sorted(await req.service.catalog.all(KEYS), key=lambda k: (k.created_at or "", k.id))
    return json_response(t.Page(data=[key_info(k) for k in keys], total=len(keys)))


async def whoami(req: Request) -> Response:
    """What the caller's own token may do, so a client (the /ui page) offers
    only that."""
    p = req.principal
    assert p is not None
    return json_response(
        t.Identity(
            key_id=p.key_id,
            role=p.role,
            workspace_id=p.workspace_id,
            user_id=p.user_id,
            permissions=sorted(p.permissions()),
        )
    )


async def revoke_key(req: Request) -> Response:
    key_id = req.path_params["keyId"]
    await apply(req, [ExpectPresent(KEYS.name, key_id), Delete(KEYS.name, key_id)])
    return json_response(t.Deleted(id=key_id))


ROUTES = [
    Route(
        "GET",
        "/api/me",
        whoami,
        "The caller's key or JWT: role, workspace scope and permissions",
        "keys",
        "read",
        response=t.Identity,
    ),
    Route(
        "POST",
        "/api/keys",
        create_key,
        "Create an API key (the secret is shown once)",
        "keys",
        "manage_keys",
        body=t.KeyCreate,
        response=t.KeyCreated,
        status=201,
    ),
    Route(
        "GET",
        "/api/keys",
        list_keys,
        "List API keys (never their secrets)",
        "keys",
        "manage_keys",
        response=t.Page,
    ),
    Route(
        "DELETE",
        "/api/keys/{keyId}",
        revoke_key,
        "Revoke an API key",
        "keys",
        "manage_keys",
        response=t.Deleted,
    ),
]
