"""The ASGI front end (`MODEL_ROUTER_INTERFACE=asgi`) answers as the RSGI one
does: the same core behind both, checked on what each front end does itself
(headers, bounded bodies, errors, streams)."""

from __future__ import annotations

import httpx
import openai
import pytest

from conftest import model_body


@pytest.fixture
def asgi_server(make_server):
    return make_server(MODEL_ROUTER_INTERFACE="asgi", MOCK_PROVIDER_KEY="k")


def test_requests_bodies_and_errors(asgi_server):
    c = asgi_server.client
    assert httpx.get(f"{asgi_server.url}/health").json()["status"] == "healthy"
    r = c.post("/api/models", json=model_body("m1"), headers={"X-Request-Id": "rid-1"})
    assert r.status_code == 201 and r.headers["x-request-id"] == "rid-1"
    assert c.post("/api/models", json=model_body("m1")).status_code == 409
    assert c.post("/api/models", content=b"{").json()["error"]["type"] == "invalid_json"
    big = b'{"name": "' + b"x" * 2_000_000 + b'"}'
    assert c.post("/api/models", content=big).status_code == 413
    assert (
        c.post("/api/models", content=iter([big[:1_000_000], big[1_000_000:]])).status_code == 413
    )
    assert httpx.get(f"{asgi_server.url}/api/models").headers["www-authenticate"] == "Bearer"


def test_streams_through_asgi(asgi_server, make_mock):
    mock = make_mock("anthropic")
    c = asgi_server.client
    c.post("/api/models", json=model_body("m1", provider="anthropic"))
    c.post(
        "/api/models/m1/endpoints",
        json={"url": mock.operation_url, "apiKeyEnv": "MOCK_PROVIDER_KEY"},
    )
    asgi_server.wait_for_config()
    client = openai.OpenAI(base_url=f"{asgi_server.url}/v1", api_key=asgi_server.admin_key)
    chunks = list(
        client.chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "hi asgi"}], stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Mock reply to: hi asgi"
    )
