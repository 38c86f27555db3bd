"""Property tests: whatever a client sends, the answer is never a 5xx, and a
rejected request leaves the stored state exactly as it was."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import BACKENDS, Server, model_body, rule_body, store_env
from model_router.api import ROUTES

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)

VALID = {
    "/api/models": model_body("fresh"),
    "/api/models/batch/status": {"updates": [{"modelId": "m1", "status": "inactive"}]},
    "/api/models/{modelId}/status": {"status": "inactive"},
    "/api/models/{modelId}/health": {"status": "healthy", "errorRate": 0.1, "availability": 99},
    "/api/models/{modelId}/endpoints": {"url": "http://127.0.0.1:9/v1/chat/completions"},
    "/api/routing/rules": rule_body("m1"),
    "/api/routing/rules/{ruleId}": {"priority": 3, "trafficSplit": {"primary": 50, "canary": 50}},
    "/api/agents/{agentType}/preferences": {"preferredModels": ["m1"]},
    "/api/workspaces/{workspaceId}/config": {"budgetLimits": {"daily": 5}},
    "/api/config/import": {"config": {"models": [model_body("m1", id="m1")]}},
    "/api/keys": {"role": "viewer"},
    "/api/canaries": {"modelId": "fresh", "baselineModelId": "m1", "scope": {"agentType": "a"}},
    "/api/experiments": {
        "name": "e",
        "scope": {"agentType": "b"},
        "variants": [{"modelId": "m1"}, {"modelId": "fresh"}],
    },
    "/api/experiments/{experimentId}/feedback": {"requestId": "req-1", "score": 1},
    "/api/route": {
        "id": "req-12345",
        "agentType": "creative",
        "workspaceId": "ws-1",
        "prompt": "Generate a creative marketing message",
        "parameters": {"temperature": 0.8, "maxTokens": 500},
        "metadata": {"requestType": "completion", "priority": "normal"},
    },
    "/v1/chat/completions": {"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
    "/v1/completions": {"model": "auto", "prompt": "Say hi"},
    "/v1/embeddings": {"model": "auto", "input": ["hello"]},
    "/v1/responses": {"model": "auto", "input": "hi"},
    "/v1/messages": {
        "model": "auto",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
    },
    "/v1/messages/count_tokens": {
        "model": "auto",
        "messages": [{"role": "user", "content": "hi"}],
    },
    "/api/routing/test": {
        "agentType": "creative",
        "workspaceId": "ws-1",
        "requestType": "completion",
        "prompt": "Test prompt",
        "metadata": {"priority": "normal"},
    },
}
PATH_VALUES = {
    "modelId": "m1",
    "ruleId": "r1",
    "agentType": "creative",
    "workspaceId": "ws-1",
    "keyId": "k",
    "experimentId": "e1",
}
WRITE_ROUTES = [r for r in ROUTES if r.body is not None]
# Routes that call models may answer 502/503/504 for a valid request (nothing
# eligible, the provider down); never 500.
CALL_ROUTES = {
    r.path for r in ROUTES if r.permission == "route" and r.path.startswith(("/v1/", "/api/route"))
}


@pytest.fixture(scope="module", params=BACKENDS)
def seeded(request, redis_url, tmp_path_factory):
    server = Server(
        store_env(request.param, redis_url, tmp_path_factory.mktemp("data")),
        tmp_path_factory.mktemp("logs"),
    ).start()
    c = server.client
    assert c.post("/api/models", json=model_body("m1", id="m1")).status_code == 201
    assert c.post("/api/routing/rules", json=rule_body("m1", id="r1")).status_code == 201
    yield server
    server.close()


def state(server: Server) -> tuple[object, object]:
    exported = server.client.get("/api/config/export").json()
    return exported["configVersion"], server.client.get("/api/keys").json()["total"]


def mutations(valid: dict) -> st.SearchStrategy[object]:
    keys = sorted(valid)
    return st.one_of(
        json_values,
        st.sampled_from(keys).map(lambda k: {x: v for x, v in valid.items() if x != k}),
        st.tuples(st.sampled_from(keys), json_values).map(lambda kv: {**valid, kv[0]: kv[1]}),
        st.tuples(st.text(min_size=1, max_size=8), json_values).map(
            lambda kv: {**valid, kv[0]: kv[1]}
        ),
    )


@pytest.mark.parametrize("route", WRITE_ROUTES, ids=lambda r: f"{r.method} {r.path}")
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_bad_bodies_are_4xx_and_change_nothing(seeded, route, data):
    path = route.path.format(**PATH_VALUES)
    payload = data.draw(
        st.one_of(
            mutations(VALID[route.path]).map(lambda v: json.dumps(v).encode()),
            st.binary(max_size=64),
            st.just(b""),
            st.just(b'{"unterminated": '),
        )
    )
    before = state(seeded)
    r = seeded.client.request(
        route.method, path, content=payload, headers={"content-type": "application/json"}
    )
    assert r.status_code != 500, r.text
    assert r.status_code < 500 or route.path in CALL_ROUTES, r.text
    if r.status_code >= 400:
        error = r.json()["error"]
        assert error["type"] and error["message"]
        assert state(seeded) == before, (payload, r.text)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    method=st.sampled_from(["GET", "POST", "PATCH", "DELETE", "PUT"]),
    segments=st.lists(
        st.text(
            st.characters(exclude_categories=["Cc", "Cs"], exclude_characters="/?#%\\"), max_size=12
        ),
        max_size=5,
    ),
    query=st.dictionaries(
        st.sampled_from(["limit", "offset", "status", "mode", "dryRun", "x"]),
        st.text(max_size=10),
        max_size=3,
    ),
)
def test_any_path_and_query_is_never_a_5xx(seeded, method, segments, query):
    before = state(seeded)
    url = "/api/" + "/".join(segments)
    r = seeded.client.request(method, url, params=query, content=b"{}")
    assert r.status_code < 500, (url, r.text)
    if r.status_code >= 400:
        assert state(seeded) == before


def test_an_oversized_body_is_413(seeded):
    big = json.dumps({**model_body("big"), "description": "x" * 2_000_000}).encode()
    before = state(seeded)
    r = seeded.client.post("/api/models", content=big)
    assert r.status_code == 413 and r.json()["error"]["type"] == "payload_too_large"
    chunked = seeded.client.post("/api/models", content=iter([big[:1_000_000], big[1_000_000:]]))
    assert chunked.status_code == 413
    # The rest of the body is never read: the client is told not to reuse
    # the connection (reusing it once met a closed socket).
    assert chunked.headers["connection"] == "close"
    assert state(seeded) == before


def test_unknown_route_and_wrong_method(seeded):
    assert seeded.client.get("/api/nothing").status_code == 404
    r = seeded.client.put("/api/models")
    assert r.status_code == 405 and set(r.headers["allow"].split(", ")) == {"GET", "POST"}
    assert httpx.get(f"{seeded.url}/nothing").json()["error"]["type"] == "not_found"
