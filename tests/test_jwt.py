"""Bearer JWTs against a real router: HS256 with a shared secret and ES256
with keys from a JWKS file (rotated while it runs), the time and audience
checks, and claims that set the caller's role, workspace and user."""

from __future__ import annotations

import json
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import model_body

SECRET = "jwt-shared-secret-0123456789abcdef"
AUDIENCE = "model-router"
ISSUER = "https://id.example.test"


@pytest.fixture(params=["sqlite"])
def backend(request):
    return request.param


def token(key, alg: str = "HS256", kid: str | None = None, **claims: object) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "exp": now + 300, "sub": "user-7", **claims}
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid} if kid else None)


def as_bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def jwks(path, keys: dict[str, ec.EllipticCurvePrivateKey]) -> None:
    entries = []
    for kid, key in keys.items():
        entry = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        entries.append({**entry, "kid": kid, "alg": "ES256", "use": "sig"})
    path.write_text(json.dumps({"keys": entries}))


def test_hs256_tokens_carry_role_workspace_and_user(make_server):
    router = make_server(
        MODEL_ROUTER_JWT_SECRET=SECRET,
        MODEL_ROUTER_JWT_AUDIENCE=AUDIENCE,
        MODEL_ROUTER_JWT_ISSUER=ISSUER,
    )
    c = router.client
    for model_id in ("m1", "m2"):
        assert c.post("/api/models", json=model_body(model_id)).status_code == 201
    rule = {
        "name": "user 7",
        "condition": {"userId": ["user-7"]},
        "targetModels": [{"modelId": "m2"}],
    }
    assert c.post("/api/routing/rules", json=rule).status_code == 201
    router.wait_for_config()
    url = router.url
    viewer = as_bearer(token(SECRET, role="viewer"))
    assert httpx.get(f"{url}/api/models", headers=viewer).status_code == 200
    assert httpx.post(f"{url}/api/models", headers=viewer, json=model_body("m2")).status_code == 403
    scoped = as_bearer(token(SECRET, role="viewer", workspace="ws-a"))
    assert httpx.get(f"{url}/api/workspaces/ws-b/config", headers=scoped).status_code == 403
    # The subject routes, not the body's userId: the rule for user-7 applies.
    r = httpx.post(
        f"{url}/api/routing/test",
        headers=as_bearer(token(SECRET, role="agent")),
        json={"agentType": "creative", "userId": "someone-else", "prompt": "hi"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["source"] == "rule" and r.json()["rule"]["name"] == "user 7"

    refused = {
        "expired": token(SECRET, exp=int(time.time()) - 3600),
        "not yet valid": token(SECRET, nbf=int(time.time()) + 3600),
        "wrong audience": token(SECRET, aud="another-service"),
        "wrong issuer": token(SECRET, iss="https://evil.example.test"),
        "wrong secret": token("another-secret-0123456789abcdef"),
        "no expiry": jwt.encode({"aud": AUDIENCE, "iss": ISSUER}, SECRET, algorithm="HS256"),
        "unknown role": token(SECRET, role="root"),
        "none algorithm": jwt.encode({"exp": int(time.time()) + 60}, None, algorithm="none") + "x",
    }
    for why, bad in refused.items():
        answer = httpx.get(f"{url}/api/models", headers=as_bearer(bad))
        assert answer.status_code == 401, (why, answer.text)
    # A minute of clock skew is forgiven (leeway 30 s by default: 20 s late is fine).
    late = token(SECRET, exp=int(time.time()) - 20)
    assert httpx.get(f"{url}/api/models", headers=as_bearer(late)).status_code == 200


def test_es256_tokens_from_a_jwks_file_follow_its_rotation(make_server, tmp_path):
    first, second = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    keys = tmp_path / "jwks.json"
    jwks(keys, {"k1": first})
    router = make_server(MODEL_ROUTER_JWT_JWKS=str(keys), MODEL_ROUTER_JWT_AUDIENCE=AUDIENCE)
    url = router.url
    ok = as_bearer(token(first, "ES256", "k1", role="viewer"))
    assert httpx.get(f"{url}/api/models", headers=ok).status_code == 200
    rotated = as_bearer(token(second, "ES256", "k2", role="viewer"))
    assert httpx.get(f"{url}/api/models", headers=rotated).status_code == 401
    jwks(keys, {"k2": second})
    time.sleep(0.05)
    assert httpx.get(f"{url}/api/models", headers=rotated).status_code == 200
    forged = as_bearer(token(first, "ES256", "k2", role="admin"))  # right kid, wrong key
    assert httpx.get(f"{url}/api/models", headers=forged).status_code == 401
    # Router keys keep working beside tokens.
    assert router.client.get("/api/models").status_code == 200
