"""Nothing secret leaves through a provider's answer: a provider that echoes
the key it was sent never shows it to a caller, and a non-admin caller sees
only the type and message of its error."""

from __future__ import annotations

import time

import httpx
import pytest
import scripted_upstream
from scripted_upstream import Json

from conftest import model_body

scripted = scripted_upstream.scripted  # the fixture

PROVIDER_KEY = "sk-provider-secret-0123456789"
CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(params=["sqlite"])
def backend(request):
    return request.param


def echo(status: int) -> Json:
    """What a careless provider answers: its error, and the header it got."""
    return Json(
        {
            "error": {"type": "invalid_request_error", "message": f"bad key Bearer {PROVIDER_KEY}"},
            "echo": {"authorization": f"Bearer {PROVIDER_KEY}"},
        },
        status=status,
    )


def test_a_provider_echoing_our_key_never_shows_it(make_server, scripted):
    router = make_server(PROVIDER_KEY=PROVIDER_KEY)
    c = router.client
    assert c.post("/api/models", json=model_body("m1")).status_code == 201
    endpoint = {"url": scripted.url + "/v1/chat/completions", "apiKeyEnv": "PROVIDER_KEY"}
    assert c.post("/api/models/m1/endpoints", json=endpoint).status_code == 201
    agent_key = c.post("/api/keys", json={"role": "agent"}).json()["key"]
    router.wait_for_config()

    for key, status in ((agent_key, 400), (router.admin_key, 400), (agent_key, 500)):
        scripted.queue("/v1/chat/completions", echo(status))
        r = httpx.post(
            f"{router.url}/v1/chat/completions", json=CHAT, headers=router.auth(key), timeout=10
        )
        assert r.status_code == (400 if status == 400 else 502), r.text
        assert PROVIDER_KEY not in r.text and "[REDACTED]" in r.text
        assert router.admin_key not in r.text
        upstream = r.json()["error"].get("details", {}).get("upstream")
        if status == 400 and key == agent_key:
            # Only the provider's error type and message: not its echo.
            assert upstream == {
                "type": "invalid_request_error",
                "message": "bad key Bearer [REDACTED]",
            }
        elif status == 400:
            assert upstream["echo"] == {"authorization": "Bearer [REDACTED]"}
    assert scripted.received[0][1]["authorization"] == f"Bearer {PROVIDER_KEY}"


def test_a_provider_key_comes_from_a_file_and_a_rotation_is_read(make_server, scripted, tmp_path):
    key_file = tmp_path / "providers" / "OPENAI_API_KEY"
    key_file.parent.mkdir()
    key_file.write_text("first-key-0123456789\n")
    router = make_server()
    c = router.client
    assert c.post("/api/models", json=model_body("m1")).status_code == 201
    endpoint = {"url": scripted.url + "/v1/chat/completions", "apiKeyFile": str(key_file)}
    assert c.post("/api/models/m1/endpoints", json=endpoint).status_code == 201
    router.wait_for_config()
    for expected in ("first-key-0123456789", "second-key-0123456789"):
        scripted.queue("/v1/chat/completions", echo(400))
        c.post("/v1/chat/completions", json=CHAT)
        assert scripted.received[-1][1]["authorization"] == f"Bearer {expected}"
        key_file.write_text("second-key-0123456789")
        time.sleep(1.1)  # looked at no more than once a second
    bad = c.post("/api/models/m1/endpoints", json={**endpoint, "apiKeyFile": "relative/path"})
    assert bad.status_code == 400 and bad.json()["error"]["details"]["field"] == "apiKeyFile"
