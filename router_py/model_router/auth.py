"""API keys: minting, hashing and the per-request check.

A key reads ``mr_<id>_<secret>``. Only the SHA-256 of the whole key is stored.
The check is the core's (`_core.Keys`, core_rs/src/keys.rs), an in-process
lookup in the table the worker's live config loads with the snapshot.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import cast

from . import _core
from . import types as t
from .http import ApiError, Permission
from .telemetry.pii import hex_id


def _permissions() -> tuple[dict[str, frozenset[Permission]], frozenset[Permission]]:
    roles, scoped = _core.permissions()
    return (
        {role: frozenset(cast(list[Permission], allowed)) for role, allowed in roles},
        frozenset(cast(list[Permission], scoped)),
    )


# What each role may do, and what a key scoped to one workspace may still do
# (these act inside a workspace): the core's table, which the door reads too.
PERMISSIONS, SCOPED_PERMISSIONS = _permissions()


@dataclass(frozen=True)
class Principal:
    key_id: str
    role: t.Role
    workspace_id: str | None = None
    user_id: str | None = None  # a JWT's subject: who, not just which key

    def permissions(self) -> frozenset[Permission]:
        allowed = PERMISSIONS[self.role]
        return allowed if self.workspace_id is None else allowed & SCOPED_PERMISSIONS

    def authorize(self, permission: Permission, workspace_id: str | None) -> None:
        if permission not in PERMISSIONS[self.role]:
            raise ApiError(
                403, "forbidden", f"role {self.role!r} may not {permission.replace('_', ' ')}"
            )
        if self.workspace_id is None:
            return
        if permission not in SCOPED_PERMISSIONS:
            raise ApiError(
                403,
                "forbidden",
                f"a key scoped to workspace {self.workspace_id!r} may not "
                f"{permission.replace('_', ' ')}",
            )
        if workspace_id is not None and workspace_id != self.workspace_id:
            raise ApiError(
                403,
                "forbidden",
                f"this key is scoped to workspace {self.workspace_id!r}",
                {"workspaceId": workspace_id},
            )


hash_key = _core.hash_key


def mint_key(
    role: t.Role, workspace_id: str | None, name: str | None, now: str
) -> tuple[str, t.ApiKey]:
    key_id = hex_id(6)
    key = f"mr_{key_id}_{secrets.token_urlsafe(32)}"
    record = t.ApiKey(
        id=key_id,
        role=role,
        secret_hash=hash_key(key),
        workspace_id=workspace_id,
        name=name,
        created_at=now,
    )
    return key, record


def looks_like_jwt(token: str) -> bool:
    return token.startswith("eyJ") and token.count(".") == 2


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise ApiError(
            401,
            "unauthorized",
            "missing Authorization header; send 'Authorization: Bearer <key>'",
            headers=[("www-authenticate", "Bearer")],
        )
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(
            401,
            "unauthorized",
            "Authorization must be 'Bearer <key>'",
            headers=[("www-authenticate", "Bearer")],
        )
    return token


def invalid_key() -> ApiError:
    return ApiError(
        401,
        "unauthorized",
        "invalid or revoked API key",
        headers=[("www-authenticate", "Bearer")],
    )
