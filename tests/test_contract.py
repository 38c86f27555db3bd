"""The server does what /openapi.json says, proven by schemathesis: requests
generated from the document (valid and invalid) for every operation, sent to a
real router as an admin, an agent and a viewer key, and each answer checked
against the document: status, content type, headers and body schema; no 500.

CI runs a bounded, deterministic sweep (a fixed seed, no example database).
A wider random one, to run by hand:
    MODEL_ROUTER_CONTRACT_EXAMPLES=200 MODEL_ROUTER_CONTRACT_SEED=random \\
        pytest -q tests/test_contract.py
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
import scripted_upstream
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events
from schemathesis.hooks import GLOBAL_HOOK_DISPATCHER

from conftest import Server, model_body
from model_router.api import ROUTES
from model_router.auth import PERMISSIONS
from model_router.types import Role

CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
]
MAX_EXAMPLES = int(os.environ.get("MODEL_ROUTER_CONTRACT_EXAMPLES", "12"))
_seed = os.environ.get("MODEL_ROUTER_CONTRACT_SEED", "20261129")
SEED = random.randrange(2**32) if _seed == "random" else int(_seed)
# Where the router may send what a generated endpoint URL names: a closed
# loopback port. Generated hosts would be looked up and called off this machine.
NOWHERE = "http://127.0.0.1:1/v1/chat/completions"
URL_FIELDS = {"url", "healthCheckUrl"}
scripted = scripted_upstream.scripted  # the fixture


@pytest.fixture
def backend() -> str:
    """The contract is the HTTP layer's; the store suite covers both stores."""
    return "sqlite"


def add_mocked_models(server: Server, openai_mock: Any, anthropic_mock: Any) -> None:
    """m1 (OpenAI-style) and claude (Anthropic), each behind a mock provider."""
    for model_id, mock in (("m1", openai_mock), ("claude", anthropic_mock)):
        body = model_body(model_id, id=model_id, provider=mock.flavor)
        assert server.client.post("/api/models", json=body).status_code == 201
        endpoint = {"url": mock.operation_url, "apiKeyEnv": "MOCK_PROVIDER_KEY"}
        r = server.client.post(f"/api/models/{model_id}/endpoints", json=endpoint)
        assert r.status_code == 201, r.text


@pytest.fixture
def router(make_server, make_mock) -> Server:
    server = make_server(MOCK_PROVIDER_KEY="provider-secret")
    add_mocked_models(server, make_mock("openai"), make_mock("anthropic"))
    return server


def key_for(server: Server, role: str) -> str:
    """The key a run uses. Nothing is excluded for being destructive: each run
    has a router of its own; the admin's is the bootstrap key, which lives in
    no store, so no DELETE /api/keys revokes it, and agent and viewer keys may
    not manage keys. What an admin run deletes or replaces (an import with
    mode=replace drops m1) only turns later answers into documented 404s;
    test_calls_that_succeed_answer_as_documented checks successes on a fresh
    router."""
    if role == "admin":
        return server.admin_key
    r = server.client.post("/api/keys", json={"role": role, "name": f"contract {role}"})
    assert r.status_code == 201, r.text
    return r.json()["key"]


def forbidden(role: Role) -> list[str]:
    """The operations a role may not call: each answers 403 before reading
    anything (test_auth.py holds the role table), so a few requests show it."""
    return [
        route.handler.__name__.strip("_")
        for route in ROUTES
        if route.permission is not None and route.permission not in PERMISSIONS[role]
    ]


def config(key: str, role: Role) -> SchemathesisConfig:
    refused = forbidden(role)
    return SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "headers": {"Authorization": f"Bearer {key}"},
            # One worker: schemathesis' worker threads race on lazy imports.
            "workers": 1,
            "request-timeout": 30,
            "checks": {
                "enabled": False,
                **{name: {"enabled": True} for name in CHECKS},
                # A router answers for its providers with 502/503/504 (documented
                # per route, which status_code_conformance holds it to); a 500
                # is always the router's own bug.
                "not_a_server_error": {"expected-statuses": ["2XX", "3XX", "4XX", 502, 503, 504]},
            },
            # Stateful runs chain calls through links the document does not declare.
            # The coverage phase (each schema's boundaries, valid and not) runs
            # once, as admin; other roles' answers differ in who may, not in what.
            "phases": {"stateful": {"enabled": False}, "coverage": {"enabled": role == "admin"}},
            "generation": {
                "max-examples": MAX_EXAMPLES,
                "deterministic": _seed != "random",
                "database": "none",
                "no-shrink": True,
            },
            "operations": [
                {
                    "include-operation-id": refused,
                    "phases": {"coverage": {"enabled": False}},
                    "generation": {"max-examples": 2},
                }
            ]
            if refused
            else [],
        }
    )


def to_loopback(value: Any) -> Any:
    """The value with every endpoint URL in it replaced by NOWHERE."""
    if isinstance(value, dict):
        return {
            k: NOWHERE if k in URL_FIELDS and isinstance(v, str) else to_loopback(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [to_loopback(v) for v in value]
    return value


@pytest.fixture
def endpoints_on_loopback() -> Iterator[None]:
    def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
        case.body = to_loopback(case.body)

    GLOBAL_HOOK_DISPATCHER.register_hook_with_name(before_call, "before_call")
    yield
    GLOBAL_HOOK_DISPATCHER.unregister(before_call)


def run_schemathesis(url: str, role: Role, key: str) -> tuple[set[str], Counter[str], list[str]]:
    """(operations tested, requests sent in each phase, failures described)."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=config(key, role))
    operations: set[str] = set()
    sent: Counter[str] = Counter()
    failures: list[str] = []
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished | events.FuzzScenarioFinished):
            recorder = event.recorder
            sent[str(getattr(event, "phase", "fuzz"))] += len(recorder.interactions)
            if event.status is not Status.SKIP:
                operations.add(recorder.label)
            failures += [
                f"{recorder.label}: {check.failure_info.failure.title}\n"
                f"{check.failure_info.failure.message}\n{check.failure_info.code_sample}"
                for checks in recorder.checks.values()
                for check in checks
                if check.failure_info is not None
            ]
        elif isinstance(event, events.NonFatalError):
            failures.append(f"{event.label}: {event.info.format()}")
        elif isinstance(event, events.FatalError):
            failures.append(repr(event.exception))
    return operations, sent, failures


@pytest.mark.parametrize("role", ["admin", "agent", "viewer"])
def test_every_answer_is_documented(router, role, endpoints_on_loopback):
    started = time.monotonic()
    operations, sent, failures = run_schemathesis(router.url, role, key_for(router, role))
    print(
        f"\ncontract as {role}: {len(operations)} operations, {sent.total()} requests "
        f"{dict(sent)}, {len(failures)} failures, {time.monotonic() - started:.1f} s (seed {SEED})"
    )
    assert not failures, "\n".join(failures[:20])
    # Every operation but the one serving the document, which schemathesis
    # schedules no test for (test_openapi.py validates the document).
    assert operations == {f"{r.method} {r.path}" for r in ROUTES if r.path != "/openapi.json"}


# --- what generated data seldom reaches: answers that succeed ------------------

HI = [{"role": "user", "content": "Hi"}]
SUCCESSES: list[tuple[str, str, dict[str, Any] | None, dict[str, str]]] = [
    ("POST", "/api/route", {"agentType": "creative", "model": "m1", "prompt": "Hi"}, {}),
    ("POST", "/v1/chat/completions", {"model": "m1", "messages": HI}, {}),
    ("POST", "/v1/chat/completions", {"model": "m1", "messages": HI, "stream": True}, {}),
    ("POST", "/v1/chat/completions", {"model": "claude", "messages": HI}, {}),
    ("POST", "/v1/responses", {"model": "m1", "input": "Hi"}, {}),
    ("POST", "/v1/messages", {"model": "claude", "messages": HI, "max_tokens": 50}, {}),
    ("POST", "/v1/messages", {"model": "m1", "messages": HI, "max_tokens": 50}, {}),
    (
        "POST",
        "/v1/messages",
        {"model": "claude", "messages": HI, "max_tokens": 50, "stream": True},
        {},
    ),
    ("GET", "/v1/models", None, {}),
    ("GET", "/v1/models", None, {"anthropic-version": "2023-06-01"}),
    ("GET", "/v1/models/{model}", None, {}),
    ("GET", "/v1/models/{model}", None, {"anthropic-version": "2023-06-01"}),
]


@pytest.mark.parametrize("role", ["admin", "agent"])
def test_calls_that_succeed_answer_as_documented(router, role):
    """Each front door's answers, whole and streamed, in both providers'
    shapes, against the document; generated requests mostly name no model."""
    key = key_for(router, role)
    schema = schemathesis.openapi.from_url(f"{router.url}/openapi.json", config=config(key, role))
    for method, path, body, headers in SUCCESSES:
        operation = schema[path][method]
        kwargs: dict[str, Any] = {"headers": {**headers, **router.auth(key)}}
        if body is not None:
            kwargs["body"] = body
        if "{model}" in path:
            kwargs["path_parameters"] = {"model": "m1"}
        response = operation.Case(**kwargs).call_and_validate()
        assert response.status_code == 200, (path, body, response.text)


# --- server bugs the contract run found --------------------------------------


def test_an_endpoint_host_name_dns_cannot_encode_is_a_connect_error(router):
    """A host label over 63 characters made the connect raise UnicodeError: a 500."""
    c = router.client
    assert c.post("/api/models", json=model_body("far", id="far")).status_code == 201
    url = f"http://{'a' * 64}.test/v1/chat/completions"
    assert c.post("/api/models/far/endpoints", json={"url": url}).status_code == 201
    router.wait_for_config()
    r = c.post("/v1/chat/completions", json={"model": "far", "messages": HI})
    assert r.status_code == 502, r.text
    (attempt,) = r.json()["error"]["details"]["attempts"]
    assert attempt["outcome"] == "connect_error"


def test_a_provider_failing_to_count_tokens_is_a_gateway_error(router, scripted):
    """count_tokens relayed the provider's status: its 500 became the router's."""
    body = model_body("counted", id="counted", provider="anthropic")
    assert router.client.post("/api/models", json=body).status_code == 201
    endpoint = {"url": f"{scripted.url}/v1/messages", "apiKeyEnv": "MOCK_PROVIDER_KEY"}
    r = router.client.post("/api/models/counted/endpoints", json=endpoint)
    assert r.status_code == 201, r.text
    router.wait_for_config()
    # Nothing queued: the scripted upstream answers 500.
    r = router.client.post("/v1/messages/count_tokens", json={"model": "counted", "messages": HI})
    assert r.status_code == 502, r.text
    assert r.json()["error"]["type"] == "api_error"
    assert [path for path, _, _ in scripted.received] == ["/v1/messages/count_tokens"]


def test_counts_past_64_bits_are_refused_not_frozen_into_the_config(router):
    """A rule's contentLength of 2^70 was stored, then failed the config load on
    every worker (no later write went live); routing/test with it was a 500."""
    c = router.client
    too_big = 2**70
    rule = {
        "name": "huge",
        "targetModels": [{"modelId": "m1", "fallbackOrder": too_big}],
        "condition": {"contentLength": {"max": too_big}},
    }
    r = c.post("/api/routing/rules", json=rule)
    assert r.status_code == 400 and r.json()["error"]["details"]["field"] == (
        "targetModels[0].fallbackOrder"
    )
    del rule["targetModels"][0]["fallbackOrder"]
    r = c.post("/api/routing/rules", json=rule)
    assert r.status_code == 400 and r.json()["error"]["details"]["field"] == (
        "condition.contentLength.max"
    )
    r = c.post("/api/routing/test", json={"agentType": "a", "contentLength": too_big})
    assert r.status_code == 400, r.text
    assert c.post("/api/routing/rules", json={**rule, "condition": {}}).status_code == 201
    router.wait_for_config()
    assert c.get("/health/detailed").json()["components"]["config"]["lastError"] is None
