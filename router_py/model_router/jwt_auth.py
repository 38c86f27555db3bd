"""Bearer JWTs, for user-specific operations: a platform's identity provider
signs a token, the router checks it and takes the caller's role, workspace
and user from its claims.

Verified with PyJWT against an HS256 secret (MODEL_ROUTER_JWT_SECRET) or the
RS256/ES256 keys of a JWKS (MODEL_ROUTER_JWT_JWKS: a file, re-read when it
changes, or an https URL, fetched once and again when a token names a key id
it does not know, i.e. on rotation). `exp` is required; `nbf`, `iss`
(MODEL_ROUTER_JWT_ISSUER) and `aud` (MODEL_ROUTER_JWT_AUDIENCE) are checked,
with MODEL_ROUTER_JWT_LEEWAY_S of clock skew. Claims: `role` (admin, operator,
agent or viewer; agent when absent), `workspace` (scopes the caller like a
workspace key), `sub` (the user id, which then feeds routing and logs in place
of a body's `userId`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import jwt

from .auth import PERMISSIONS, Principal
from .http import ApiError
from .settings import Settings

ASYMMETRIC = ["RS256", "ES256"]


def rejected(why: str) -> ApiError:
    return ApiError(
        401, "unauthorized", f"invalid token: {why}", headers=[("www-authenticate", "Bearer")]
    )


class JwtVerifier:
    def __init__(self, settings: Settings):
        self.secret = settings.jwt_secret
        self.jwks = settings.jwt_jwks
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self.leeway = settings.jwt_leeway_s
        self._keys: dict[str, Any] = {}  # key id -> public key
        self._jwks_file_mtime = -1
        self._client = (
            jwt.PyJWKClient(self.jwks, cache_keys=True)
            if self.jwks and self.jwks.startswith("https://")
            else None
        )

    async def authenticate(self, token: str) -> Principal:
        return principal_of(await self.verify(token))

    async def verify(self, token: str) -> dict[str, Any]:
        """The token's claims, or a 401 saying why not."""
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") == "HS256" and self.secret:
                key: Any = self.secret
                algorithms = ["HS256"]
            elif header.get("alg") in ASYMMETRIC and self.jwks:
                key = await self._public_key(header.get("kid"))
                algorithms = ASYMMETRIC
            else:
                raise rejected(f"algorithm {header.get('alg')!r} is not accepted")
            return jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp"], "verify_aud": self.audience is not None},
            )
        except jwt.PyJWTError as exc:
            raise rejected(str(exc)) from None

    async def _public_key(self, kid: str | None) -> Any:
        if self._client is not None:
            # Fetched off the event loop; PyJWKClient refetches on an unknown kid.
            signing = await asyncio.to_thread(self._client.get_signing_key, kid or "")
            return signing.key
        assert self.jwks is not None
        path = Path(self.jwks)
        mtime = path.stat().st_mtime_ns
        if mtime != self._jwks_file_mtime:
            keys = jwt.PyJWKSet.from_dict(json.loads(path.read_text())).keys
            self._keys = {k.key_id or "": k.key for k in keys}
            self._jwks_file_mtime = mtime
        if kid not in self._keys:
            raise rejected(f"no key {kid!r} in the JWKS")
        return self._keys[kid]


def principal_of(claims: dict[str, Any]) -> Principal:
    """The caller a token's claims describe. Its key id stands for the user in
    rate limits and logs: a hash of the subject, not the subject."""
    role = claims.get("role", "agent")
    if role not in PERMISSIONS:
        raise rejected(f"role {role!r} is not one of {', '.join(PERMISSIONS)}")
    subject = claims.get("sub")
    workspace = claims.get("workspace")
    if workspace is not None and not isinstance(workspace, str):
        raise rejected("workspace must be a string")
    user = str(subject) if subject is not None else None
    key_id = "jwt-" + hashlib.sha256((user or "").encode()).hexdigest()[:16]
    return Principal(key_id, role, workspace, user)
