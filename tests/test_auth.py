"""Keys, roles, workspace scopes and the rate limit, against a real server."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from conftest import Server, model_body, within_one_minute

SHARED_STORE = {"MODEL_ROUTER_DATA_DIR", "MODEL_ROUTER_REDIS_NAMESPACE"}  # what replicas share


def _key(server, role: str, workspace: str | None = None) -> str:
    body = {"role": role, "name": f"{role} key"}
    if workspace:
        body["workspaceId"] = workspace
    r = server.client.post("/api/keys", json=body)
    assert r.status_code == 201, r.text
    return r.json()["key"]


def _as(server, key: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers=server.auth(key), timeout=10)


def test_every_api_route_needs_a_key_health_does_not(server):
    anon = httpx.Client(base_url=server.url)
    assert anon.get("/health").status_code == 200
    assert anon.get("/health/ready").status_code == 200
    assert anon.get("/openapi.json").status_code == 200
    for method, path in [
        ("GET", "/api/models"),
        ("POST", "/api/models"),
        ("GET", "/api/keys"),
        ("GET", "/api/config/export"),
        ("POST", "/api/workspaces/ws-1/config"),
    ]:
        r = anon.request(method, path, json={})
        assert r.status_code == 401, path
        assert r.json()["error"]["type"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
    for header in ("Bearer mr_nope_nothing", "Bearer nonsense", "Basic abc", "Bearer"):
        r = anon.get("/api/models", headers={"Authorization": header})
        assert r.status_code == 401, header


def test_keys_are_created_listed_without_secret_and_revoked(server):
    key = _key(server, "viewer")
    assert key.startswith("mr_")
    listed = server.client.get("/api/keys").json()
    assert listed["total"] == 1
    assert key not in str(listed) and "secretHash" not in str(listed)
    info = listed["data"][0]
    assert info["role"] == "viewer" and info["name"] == "viewer key"

    viewer = _as(server, key)
    assert viewer.get("/api/models").status_code == 200
    assert server.client.delete(f"/api/keys/{info['id']}").status_code == 200
    assert viewer.get("/api/models").status_code == 401
    assert server.client.delete(f"/api/keys/{info['id']}").status_code == 404
    tampered = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    assert _as(server, tampered).get("/api/models").status_code == 401


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        ("viewer", {"read"}),
        ("agent", {"read"}),
        ("operator", {"read", "operate"}),
        ("admin", {"read", "operate", "configure", "keys"}),
    ],
)
def test_roles(server, role, allowed):
    server.client.post("/api/models", json=model_body("m1"))
    c = _as(server, _key(server, role))
    attempts = {
        "read": lambda: c.get("/api/models/m1"),
        "operate": lambda: c.patch("/api/models/m1/status", json={"status": "active"}),
        "configure": lambda: c.post("/api/models", json=model_body(f"new-{role}")),
        "keys": lambda: c.get("/api/keys"),
    }
    for name, attempt in attempts.items():
        r = attempt()
        expected = {"read": 200, "operate": 200, "configure": 201, "keys": 200}[name]
        assert r.status_code == (expected if name in allowed else 403), (role, name, r.text)
        if r.status_code == 403:
            assert r.json()["error"]["type"] == "forbidden"


def test_workspace_scope(server):
    scoped_admin = _as(server, _key(server, "admin", "ws-1"))
    body = {"budgetLimits": {"daily": 10}}
    assert scoped_admin.post("/api/workspaces/ws-1/config", json=body).status_code == 201
    other = scoped_admin.post("/api/workspaces/ws-2/config", json=body)
    assert other.status_code == 403 and "ws-1" in other.json()["error"]["message"]
    assert scoped_admin.get("/api/workspaces/ws-1/config").status_code == 200
    assert scoped_admin.get("/api/workspaces/ws-2/config").status_code == 403
    # Writes that reach beyond one workspace are not for a scoped key.
    assert scoped_admin.post("/api/models", json=model_body("m")).status_code == 403
    assert scoped_admin.post("/api/keys", json={"role": "admin"}).status_code == 403
    scoped_viewer = _as(server, _key(server, "viewer", "ws-1"))
    assert scoped_viewer.post("/api/workspaces/ws-1/config", json=body).status_code == 403


def test_a_caller_learns_its_own_role_scope_and_permissions(server):
    me = server.client.get("/api/me").json()
    assert me == {
        "keyId": "bootstrap-admin",
        "role": "admin",
        "workspaceId": None,
        "userId": None,
        "permissions": [
            "audit",
            "configure",
            "configure_workspace",
            "manage_keys",
            "operate",
            "read",
            "route",
        ],
    }
    with _as(server, _key(server, "viewer")) as viewer:
        assert viewer.get("/api/me").json()["permissions"] == ["read"]
    # A scoped key: what its role may do inside a workspace, nothing more.
    with _as(server, _key(server, "admin", "ws-1")) as scoped:
        me = scoped.get("/api/me").json()
        assert me["role"] == "admin" and me["workspaceId"] == "ws-1"
        assert me["permissions"] == ["configure_workspace", "read", "route"]
    assert httpx.get(f"{server.url}/api/me").status_code == 401


def test_key_created_through_one_worker_works_at_once_on_every_worker(make_server):
    server = make_server(workers=2)
    for _ in range(10):
        key = _key(server, "viewer")
        with httpx.Client(base_url=server.url, headers=server.auth(key)) as c:
            for _ in range(4):  # fresh connections land on either worker
                assert c.get("/api/models", headers={"Connection": "close"}).status_code == 200


def test_rate_limit_answers_429_with_retry_after(make_server):
    server = make_server(RATE_LIMIT_MAX="5", RATE_LIMIT_WINDOW_MS="60000")
    c = _as(server, _key(server, "viewer"))
    within_one_minute(5)  # the limit's window is the clock's minute
    codes = [c.get("/api/models").status_code for _ in range(7)]
    assert codes == [200] * 5 + [429] * 2
    limited = c.get("/api/models")
    assert limited.json()["error"]["type"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert server.client.get("/api/models").status_code == 200  # per key, not global
    assert httpx.get(f"{server.url}/health").status_code == 200


@pytest.mark.parametrize("replicas", [1, 2], ids=["two-workers", "two-replicas"])
def test_rate_limits_are_exact_across_workers_and_replicas(make_server, replicas):
    first = make_server(workers=2, RATE_LIMIT_MAX="50", RATE_LIMIT_WINDOW_MS="600000")
    routers = [first] + [
        make_server(
            workers=2,
            RATE_LIMIT_MAX="50",
            RATE_LIMIT_WINDOW_MS="600000",
            **{k: v for k, v in first.env.items() if k in SHARED_STORE},
        )
        for _ in range(replicas - 1)
    ]
    key = _key(first, "viewer")
    for router in routers:
        router.wait_for_config()

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=200)) as c:
            return await asyncio.gather(
                *(
                    c.get(f"{routers[i % len(routers)].url}/api/models", headers=Server.auth(key))
                    for i in range(200)
                )
            )

    codes = [r.status_code for r in asyncio.run(burst())]
    assert codes.count(200) == 50 and codes.count(429) == 150, sorted(set(codes))
    admitted = next(r for r in asyncio.run(burst()) if r.status_code == 429)
    assert admitted.headers["x-ratelimit-limit"] == "50"
    assert admitted.headers["x-ratelimit-remaining"] == "0"
    assert 1 <= int(admitted.headers["x-ratelimit-reset"]) <= 600


def test_a_scoped_key_sees_only_what_applies_to_its_workspace(server):
    c = server.client
    for model_id in ("a", "b", "c"):
        assert c.post("/api/models", json=model_body(model_id)).status_code == 201
    assert c.post("/api/workspaces/ws-a/config", json={"modelRestrictions": ["a", "b"]}).is_success
    other = {"name": "ws-b only", "condition": {"workspaceId": ["ws-b"]}, "id": "r-b"}
    mine = {"name": "everyone", "id": "r-all"}
    for rule, target in ((other, "c"), (mine, "a")):
        body = {**rule, "targetModels": [{"modelId": target}]}
        assert c.post("/api/routing/rules", json=body).status_code == 201
    scoped = _as(server, _key(server, "viewer", "ws-a"))
    assert [r["id"] for r in scoped.get("/api/routing/rules").json()["data"]] == ["r-all"]
    assert scoped.get("/api/routing/rules/r-b").status_code == 404
    assert [m["id"] for m in scoped.get("/api/models").json()["data"]] == ["a", "b"]
    for hidden in ("/api/models/c", "/api/models/c/endpoints", "/api/models/c/health"):
        assert scoped.get(hidden).status_code == 404, hidden
    assert [m["id"] for m in scoped.get("/v1/models").json()["data"]] == ["auto", "a", "b"]
    assert scoped.get("/v1/models/c").status_code == 404
    # An unscoped key sees everything.
    assert len(c.get("/api/routing/rules").json()["data"]) == 2
    assert len(c.get("/api/models").json()["data"]) == 3
