"""OpenAI <-> Anthropic translation end to end, from the outside: real SDK
clients (openai, anthropic, langchain-openai, litellm) call a real router, which
calls a scripted upstream on loopback (tests/scripted_upstream.py). Each test
checks what the upstream received, field by field, and what the client got.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anthropic
import httpx
import openai
import pytest
import scripted_upstream
from pydantic import BaseModel, Field
from scripted_upstream import (
    Json,
    ScriptedUpstream,
    Sse,
    anthropic_message,
    anthropic_stream,
    openai_completion,
    openai_stream,
    openai_usage,
    text_block,
    tool_call,
    tool_use_block,
)

from conftest import Server, model_body, store_env

scripted = scripted_upstream.scripted  # the fixture

PRICING = {
    "inputPer1k": 0.003,
    "outputPer1k": 0.015,
    "cacheReadPer1k": 0.0003,
    "cacheWritePer1k": 0.00375,
}
PATHS = {
    "anthropic": "/v1/messages",
    "openai": "/v1/chat/completions",
    "embedding": "/v1/embeddings",
    "completion": "/v1/completions",
}
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
OPENAI_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": WEATHER_SCHEMA,
    },
}
ANTHROPIC_TOOL = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": WEATHER_SCHEMA,
}
QUESTION = "Weather in Paris and Rome?"
PARIS, ROME = {"city": "Paris"}, {"city": "Rome"}
PNG = (  # a 1x1 pixel
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
PNG_URL = "data:image/png;base64," + PNG
CAT_URL = "https://example.com/cat.png"
JPEG_URL = "data:image/jpeg;base64,/9j/4AAQ"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    """SQLite only, unless a test parametrizes `backend` itself."""
    return request.param


@pytest.fixture(scope="module")
def routers(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable]:
    """One router per backend for the whole module, each with the export of
    its empty config: starting one router per test was most of this module's
    time."""
    started: dict[str, tuple[Server, dict[str, Any]]] = {}

    def get(backend: str) -> tuple[Server, dict[str, Any]]:
        if backend not in started:
            workdir = tmp_path_factory.mktemp(f"router-{backend}")
            env = store_env(backend, redis_url, workdir / "data")
            server = Server({**env, "MOCK_PROVIDER_KEY": "provider-secret"}, workdir).start()
            started[backend] = server, server.client.get("/api/config/export").json()
        return started[backend]

    yield get
    for server, _ in started.values():
        server.close()


@pytest.fixture
def router(routers, backend: str) -> Iterator[Server]:
    """The backend's shared router; each test leaves it as it found it (the
    empty config imported in place of the test's models and rules)."""
    server, empty = routers(backend)
    yield server
    r = server.client.post("/api/config/import", params={"mode": "replace"}, json=empty)
    assert r.status_code == 200, r.text
    server.wait_for_config()


# --- helpers -----------------------------------------------------------------


def add_model(
    router,
    scripted: ScriptedUpstream,
    model_id: str,
    provider: str = "anthropic",
    *,
    endpoints: int = 1,
    path: str | None = None,
    **fields: Any,
) -> None:
    """A model whose endpoints (primary, then backups) all point at the scripted
    upstream, at the provider's operation path. Its version (the provider's
    name for it, which upstream requests carry) is "<id>-upstream"."""
    fields.setdefault("version", f"{model_id}-upstream")
    body = model_body(model_id, id=model_id, provider=provider, pricing=PRICING, **fields)
    r = router.client.post("/api/models", json=body)
    assert r.status_code == 201, r.text
    url = scripted.url + (path or PATHS[provider])
    for i in range(endpoints):
        r = router.client.post(
            f"/api/models/{model_id}/endpoints",
            json={
                "id": f"{model_id}-ep{i}",
                "url": url,
                "type": "primary" if i == 0 else "backup",
                "apiKeyEnv": "MOCK_PROVIDER_KEY",
            },
        )
        assert r.status_code == 201, r.text


def one_model(router, scripted: ScriptedUpstream, provider: str = "anthropic", **fields) -> None:
    add_model(router, scripted, "m1", provider, **fields)
    router.wait_for_config()


def openai_client(router, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{router.url}/v1",
        api_key=router.admin_key,
        max_retries=0,
        default_headers=headers or None,
    )


def anthropic_client(router, **headers: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=router.url,
        api_key=router.admin_key,
        max_retries=0,
        default_headers=headers or None,
    )


SDKS: dict[str, Any] = {"openai": openai, "anthropic": anthropic}  # for their error classes


def stream_through(router, client: str, model: str, **headers: str) -> tuple[Any, str]:
    """A streamed "hi" through the client's SDK: (response headers, the text)."""
    if client == "openai":
        raw = openai_client(router, **headers).chat.completions.with_raw_response.create(
            model=model, messages=HI, stream=True
        )
        chunks = list(raw.parse())
        return raw.headers, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    with anthropic_client(router, **headers).messages.stream(
        model=model, max_tokens=50, messages=HI
    ) as stream:
        return stream.response.headers, stream.get_final_text()


def ask(router, client: str) -> Any:
    """A plain "hi" to m1 through the client's SDK."""
    if client == "openai":
        return openai_client(router).chat.completions.create(model="m1", messages=HI)
    return anthropic_client(router).messages.create(model="m1", max_tokens=10, messages=HI)


def call(router, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(router.url + path, json=body, headers=router.auth(router.admin_key))


def upstream_body(scripted: ScriptedUpstream, *, requests: int) -> dict[str, Any]:
    """The body of the last upstream request, after checking how many there were;
    an explicit `"stream": false` is dropped (the same request either way)."""
    assert len(scripted.received) == requests, [p for p, _, _ in scripted.received]
    body = dict(scripted.received[-1][2])
    if body.get("stream") is False:
        del body["stream"]
    return body


def parts(content: Any) -> Any:
    """A message's string content as the equivalent one text part/block."""
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def as_anthropic_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**m, "content": parts(m["content"])} for m in messages]


def as_openai_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Comparable OpenAI messages: string content as one text part (tool results
    stay strings), no empty content, tool call arguments parsed."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("content") in (None, "", []):
            m.pop("content", None)
        elif m["role"] != "tool":
            m["content"] = parts(m["content"])
        if "tool_calls" in m:
            m["tool_calls"] = [
                {
                    **c,
                    "function": {
                        **c["function"],
                        "arguments": json.loads(c["function"]["arguments"]),
                    },
                }
                for c in m["tool_calls"]
            ]
        out.append(m)
    return out


def anthropic_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI function tools as the Anthropic tools they translate to."""
    out = []
    for tool in tools:
        f = tool["function"]
        anthropic_tool = {"name": f["name"], "input_schema": f["parameters"]}
        if "description" in f:
            anthropic_tool["description"] = f["description"]
        out.append(anthropic_tool)
    return out


def tool_calls_of(message) -> list[tuple[str, str, str, Any]]:
    """An OpenAI SDK message's tool calls: (id, type, name, parsed arguments)."""
    return [
        (c.id, c.type, c.function.name, json.loads(c.function.arguments))
        for c in message.tool_calls or []
    ]


def latest_request_record(router) -> dict[str, Any]:
    """The router's record of the last request (records are flushed once a second)."""
    deadline = time.time() + 5
    time.sleep(1.2)
    while not (data := router.client.get("/api/metrics/requests?limit=1").json()["data"]):
        assert time.time() < deadline, "no request was recorded"
        time.sleep(0.2)
    return data[0]


# --- 1, 2: two-turn tool use, plain -----------------------------------------


def test_openai_sdk_tool_use_conversation_on_anthropic(router, scripted):
    one_model(router, scripted, "anthropic")
    client = openai_client(router)
    scripted.queue(
        "/v1/messages",
        Json(
            anthropic_message(
                text_block("Let me check."),
                tool_use_block("toolu_1", "get_weather", PARIS),
                tool_use_block("toolu_2", "get_weather", ROME),
                stop_reason="tool_use",
                input_tokens=120,
                output_tokens=40,
            )
        ),
    )
    messages: list[Any] = [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": "Use the tools."},
        {"role": "user", "content": QUESTION},
    ]
    reply = client.chat.completions.create(
        model="m1",
        messages=messages,
        tools=[OPENAI_TOOL],
        tool_choice="auto",
        temperature=0.2,
        top_p=0.9,
        stop="END",
        user="u-42",
        max_completion_tokens=300,
    )

    path, headers, _ = scripted.received[0]
    assert path == "/v1/messages" and headers["x-api-key"] == "provider-secret"
    assert router.admin_key not in json.dumps(headers), "the caller's key went upstream"
    assert "anthropic-version" in headers
    sent = upstream_body(scripted, requests=1)
    assert {**sent, "messages": as_anthropic_messages(sent["messages"])} == {
        "model": "m1-upstream",
        "max_tokens": 300,
        "system": "You are terse.\n\nUse the tools.",
        "messages": [{"role": "user", "content": [text_block(QUESTION)]}],
        "temperature": 0.2,
        "top_p": 0.9,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-42"},
        "tools": [ANTHROPIC_TOOL],
        "tool_choice": {"type": "auto"},
    }
    assert reply.model == "m1" and reply.object == "chat.completion"
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.role == "assistant" and choice.message.content == "Let me check."
    assert tool_calls_of(choice.message) == [
        ("toolu_1", "function", "get_weather", PARIS),
        ("toolu_2", "function", "get_weather", ROME),
    ]
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (120, 40)
    assert reply.usage.total_tokens == 160

    # Turn 2: the assistant's message as the SDK returned it, then both results.
    scripted.queue(
        "/v1/messages",
        Json(anthropic_message(text_block("Paris 18C, Rome 21C."), output_tokens=9)),
    )
    messages += [
        choice.message,
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "21C cloudy"},
    ]
    final = client.chat.completions.create(model="m1", messages=messages, tools=[OPENAI_TOOL])
    sent = upstream_body(scripted, requests=2)
    assert {**sent, "messages": as_anthropic_messages(sent["messages"])} == {
        "model": "m1-upstream",
        "max_tokens": 4096,
        "system": "You are terse.\n\nUse the tools.",
        "messages": [
            {"role": "user", "content": [text_block(QUESTION)]},
            {
                "role": "assistant",
                "content": [
                    text_block("Let me check."),
                    tool_use_block("toolu_1", "get_weather", PARIS),
                    tool_use_block("toolu_2", "get_weather", ROME),
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C sunny"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "21C cloudy"},
                ],
            },
        ],
        "tools": [ANTHROPIC_TOOL],
    }
    assert final.choices[0].message.content == "Paris 18C, Rome 21C."
    assert final.choices[0].finish_reason == "stop" and final.choices[0].message.tool_calls is None


@pytest.mark.parametrize("content", [None, ""], ids=["none", "empty"])
def test_assistant_tool_calls_without_text_become_only_tool_use_blocks(router, scripted, content):
    one_model(router, scripted, "anthropic")
    scripted.queue("/v1/messages", Json(anthropic_message(text_block("18C."))))
    assistant = {
        "role": "assistant",
        "content": content,
        "tool_calls": [tool_call("call_1", "get_weather", PARIS)],
    }
    r = call(
        router,
        "/v1/chat/completions",
        {
            "model": "m1",
            "messages": [
                {"role": "user", "content": "Paris?"},
                assistant,
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            ],
            "tools": [OPENAI_TOOL],
        },
    )
    assert r.status_code == 200, r.text
    assert as_anthropic_messages(upstream_body(scripted, requests=1)["messages"]) == [
        {"role": "user", "content": [text_block("Paris?")]},
        {"role": "assistant", "content": [tool_use_block("call_1", "get_weather", PARIS)]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "18C"}],
        },
    ]


@pytest.mark.parametrize(
    "result", ["18C", [{"type": "text", "text": "18C"}]], ids=["string", "text-parts"]
)
def test_tool_results_then_a_user_message_make_one_user_turn(router, scripted, result):
    """docs/providers.md: tool results (their text, as one string) and a user
    message after them merge into one user turn, results first."""
    one_model(router, scripted, "anthropic")
    scripted.queue("/v1/messages", Json(anthropic_message(text_block("ok"))))
    r = call(
        router,
        "/v1/chat/completions",
        {
            "model": "m1",
            "messages": [
                {"role": "user", "content": "Paris?"},
                {"role": "assistant", "tool_calls": [tool_call("call_1", "get_weather", PARIS)]},
                {"role": "tool", "tool_call_id": "call_1", "content": result},
                {"role": "user", "content": "And in Fahrenheit?"},
            ],
            "tools": [OPENAI_TOOL],
        },
    )
    assert r.status_code == 200, r.text
    assert upstream_body(scripted, requests=1)["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
            text_block("And in Fahrenheit?"),
        ],
    }


def test_anthropic_thinking_reaches_openai_clients_as_reasoning_content(router, scripted):
    """docs/providers.md: thinking blocks -> message.reasoning_content, and
    thinking_delta -> delta.reasoning_content."""
    one_model(router, scripted, "anthropic")
    blocks = [{"type": "thinking", "thinking": "Two and two.", "signature": "sig"}, text_block("4")]
    scripted.queue("/v1/messages", Json(anthropic_message(*blocks)), Sse(anthropic_stream(*blocks)))
    client = openai_client(router)
    message = client.chat.completions.create(model="m1", messages=HI).choices[0].message
    assert message.content == "4"
    assert message.model_extra["reasoning_content"] == "Two and two."
    deltas = [
        c.choices[0].delta
        for c in client.chat.completions.create(model="m1", messages=HI, stream=True)
        if c.choices
    ]
    assert "".join(d.content or "" for d in deltas) == "4"
    reasoning = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)
    assert reasoning == "Two and two."


def test_anthropic_sdk_tool_use_conversation_on_openai(router, scripted):
    one_model(router, scripted, "openai")
    client = anthropic_client(router)
    scripted.queue(
        "/v1/chat/completions",
        Json(
            openai_completion(
                "Let me check.",
                [
                    tool_call("call_1", "get_weather", PARIS),
                    tool_call("call_2", "get_weather", ROME),
                ],
                "tool_calls",
                openai_usage(120, 40, cached=20),
            )
        ),
    )
    messages: list[Any] = [{"role": "user", "content": QUESTION}]
    reply = client.messages.create(
        model="m1",
        max_tokens=300,
        system="You are terse.",
        messages=messages,
        tools=[ANTHROPIC_TOOL],
        stop_sequences=["END"],
        metadata={"user_id": "u-42"},
        extra_body={"temperature": 0.2},  # this SDK version has no `temperature` argument
    )

    path, headers, _ = scripted.received[0]
    assert path == "/v1/chat/completions"
    assert headers["authorization"] == "Bearer provider-secret"
    assert router.admin_key not in json.dumps(headers), "the caller's key went upstream"
    sent = upstream_body(scripted, requests=1)
    limit = sent.pop("max_completion_tokens", None) or sent.pop("max_tokens", None)
    assert limit == 300
    assert {**sent, "messages": as_openai_messages(sent["messages"])} == {
        "model": "m1-upstream",
        "messages": as_openai_messages(
            [{"role": "system", "content": "You are terse."}, {"role": "user", "content": QUESTION}]
        ),
        "temperature": 0.2,
        "stop": ["END"],
        "user": "u-42",
        "tools": [OPENAI_TOOL],
    }
    assert reply.type == "message" and reply.role == "assistant" and reply.model == "m1"
    assert reply.stop_reason == "tool_use"
    assert [b.model_dump(exclude_none=True) for b in reply.content] == [
        text_block("Let me check."),
        tool_use_block("call_1", "get_weather", PARIS),
        tool_use_block("call_2", "get_weather", ROME),
    ]
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (100, 40)
    assert reply.usage.cache_read_input_tokens == 20

    scripted.queue(
        "/v1/chat/completions",
        Json(openai_completion("Paris 18C, Rome 21C.", usage=openai_usage())),
    )
    messages += [
        {"role": "assistant", "content": reply.content},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C sunny"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "21C cloudy"},
            ],
        },
    ]
    final = client.messages.create(
        model="m1",
        max_tokens=300,
        system="You are terse.",
        messages=messages,
        tools=[ANTHROPIC_TOOL],
    )
    sent = upstream_body(scripted, requests=2)
    assert as_openai_messages(sent["messages"]) == as_openai_messages(
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": QUESTION},
            {
                "role": "assistant",
                "content": "Let me check.",
                "tool_calls": [
                    tool_call("call_1", "get_weather", PARIS),
                    tool_call("call_2", "get_weather", ROME),
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18C sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": "21C cloudy"},
        ]
    )
    assert sent["tools"] == [OPENAI_TOOL] and sent["model"] == "m1-upstream"
    assert [b.model_dump(exclude_none=True) for b in final.content] == [
        text_block("Paris 18C, Rome 21C.")
    ]
    assert final.stop_reason == "end_turn"


# --- 3: the same, streamed ---------------------------------------------------


def test_openai_sdk_stream_with_tool_call_deltas_from_anthropic(router, scripted):
    one_model(router, scripted, "anthropic")
    blocks = [
        text_block("Let me check."),
        tool_use_block("toolu_1", "get_weather", PARIS),
        tool_use_block("toolu_2", "get_weather", {"city": "Rome", "days": [1, 2]}),
    ]
    scripted.queue(
        "/v1/messages",
        Sse(
            anthropic_stream(
                *blocks,
                stop_reason="tool_use",
                input_tokens=50,
                cache_read_input_tokens=30,
                output_tokens=25,
            ),
            delay=0.01,
        ),
    )
    client = openai_client(router)
    chunks = list(
        client.chat.completions.create(
            model="m1",
            messages=[{"role": "user", "content": QUESTION}],
            tools=[OPENAI_TOOL],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    sent = upstream_body(scripted, requests=1)
    assert sent["stream"] is True and sent["tools"] == [ANTHROPIC_TOOL]
    assert "stream_options" not in sent

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Let me check."
    calls: dict[int, dict[str, Any]] = {}
    for c in chunks:
        for d in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            if d.index not in calls:  # the first delta of a call names it
                assert (d.type, d.function.arguments) == ("function", "")
                calls[d.index] = {"id": d.id, "name": d.function.name, "arguments": ""}
            else:
                assert d.id is None
                calls[d.index]["arguments"] += d.function.arguments or ""
    assert calls == {
        0: {"id": "toolu_1", "name": "get_weather", "arguments": json.dumps(PARIS)},
        1: {
            "id": "toolu_2",
            "name": "get_weather",
            "arguments": json.dumps({"city": "Rome", "days": [1, 2]}),
        },
    }
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "tool_calls" and set(finishes[:-1]) == {None}
    assert all(c.model == "m1" for c in chunks)
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (80, 25)
    assert usage.prompt_tokens_details.cached_tokens == 30

    # The SDK's own accumulation agrees.
    scripted.queue("/v1/messages", Sse(anthropic_stream(*blocks, stop_reason="tool_use")))
    with client.chat.completions.stream(
        model="m1", messages=[{"role": "user", "content": QUESTION}], tools=[OPENAI_TOOL]
    ) as stream:
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert message.content == "Let me check." and final.choices[0].finish_reason == "tool_calls"
    assert tool_calls_of(message) == [
        ("toolu_1", "function", "get_weather", PARIS),
        ("toolu_2", "function", "get_weather", {"city": "Rome", "days": [1, 2]}),
    ]


def test_anthropic_sdk_stream_with_text_and_tool_use_from_openai(router, scripted):
    one_model(router, scripted, "openai")
    calls = [tool_call("call_1", "get_weather", PARIS), tool_call("call_2", "get_weather", ROME)]
    scripted.queue(
        "/v1/chat/completions",
        Sse(
            openai_stream("Let me check.", calls, "tool_calls", openai_usage(120, 40, cached=20)),
            delay=0.01,
        ),
    )
    client = anthropic_client(router)
    with client.messages.stream(
        model="m1",
        max_tokens=300,
        messages=[{"role": "user", "content": QUESTION}],
        tools=[ANTHROPIC_TOOL],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    sent = upstream_body(scripted, requests=1)
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["tools"] == [OPENAI_TOOL]

    assert text == "Let me check." and final.model == "m1"
    assert [b.model_dump(exclude_none=True) for b in final.content] == [
        text_block("Let me check."),
        tool_use_block("call_1", "get_weather", PARIS),
        tool_use_block("call_2", "get_weather", ROME),
    ]
    assert final.stop_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (100, 40)
    assert final.usage.cache_read_input_tokens == 20


def test_anthropic_sdk_raw_stream_follows_anthropics_event_sequence(router, scripted):
    one_model(router, scripted, "openai")
    scripted.queue(
        "/v1/chat/completions",
        Sse(
            openai_stream("Hello there", [tool_call("call_1", "get_weather", PARIS)], "tool_calls")
        ),
    )
    events = list(
        anthropic_client(router).messages.create(
            model="m1",
            max_tokens=100,
            messages=[{"role": "user", "content": "hi"}],
            tools=[ANTHROPIC_TOOL],
            stream=True,
        )
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    blocks = [e.content_block.type for e in events if e.type == "content_block_start"]
    assert blocks == ["text", "tool_use"]
    block_events = [(e.type, e.index) for e in events if e.type.startswith("content_block")]
    indexes = [i for _, i in block_events]
    assert indexes == sorted(indexes) and set(indexes) == {0, 1}  # one block at a time
    for k in (0, 1):
        kinds_of_k = [kind for kind, i in block_events if i == k]
        assert kinds_of_k[0] == "content_block_start" and kinds_of_k[-1] == "content_block_stop"
        assert set(kinds_of_k[1:-1]) == {"content_block_delta"}
    deltas = {e.delta.type for e in events if e.type == "content_block_delta"}
    assert deltas == {"text_delta", "input_json_delta"}
    arguments = "".join(
        e.delta.partial_json
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    )
    assert json.loads(arguments) == PARIS
    assert events[-2].delta.stop_reason == "tool_use"


def sse_events(router, path: str, body: dict[str, Any]) -> list[tuple[str | None, str]]:
    """The (event name, data) pairs of a streamed answer, as sent on the wire."""
    events, name = [], None
    with httpx.stream(
        "POST", router.url + path, json=body, headers=router.auth(router.admin_key)
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                events.append((name, line[5:].strip()))
                name = None
    return events


def test_translated_streams_on_the_wire(router, scripted):
    """What SDKs hide: OpenAI chunks end with the usage chunk then [DONE];
    Anthropic events are named after their type."""
    add_model(router, scripted, "a1", "anthropic")
    add_model(router, scripted, "g1", "openai")
    router.wait_for_config()
    scripted.queue("/v1/messages", Sse(anthropic_stream(text_block("Hello there"))))
    chat = {"messages": HI, "stream": True, "stream_options": {"include_usage": True}}
    events = sse_events(router, "/v1/chat/completions", {"model": "a1", **chat})
    assert {name for name, _ in events} == {None} and events[-1][1] == "[DONE]"
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1 and {c["model"] for c in chunks} == {"a1"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"

    scripted.queue("/v1/chat/completions", Sse(openai_stream("Hello there")))
    messages = {"messages": HI, "stream": True, "max_tokens": 20}
    events = sse_events(router, "/v1/messages", {"model": "g1", **messages})
    assert [name for name, _ in events] == [json.loads(data)["type"] for _, data in events]
    assert events[0][0] == "message_start" and events[-1][0] == "message_stop"
    assert json.loads(events[0][1])["message"]["model"] == "g1"


# --- 4: images, structured output, langchain ----------------------------------


def test_images_from_openai_sdk_reach_anthropic_as_image_blocks(router, scripted):
    one_model(router, scripted, "anthropic")
    scripted.queue("/v1/messages", Json(anthropic_message(text_block("A cat."))))
    reply = openai_client(router).chat.completions.create(
        model="m1",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in these?"},
                    {"type": "image_url", "image_url": {"url": PNG_URL}},
                    {"type": "image_url", "image_url": {"url": CAT_URL}},
                    {"type": "image_url", "image_url": {"url": JPEG_URL, "detail": "low"}},
                ],
            }
        ],
    )
    assert reply.choices[0].message.content == "A cat."
    assert upstream_body(scripted, requests=1)["messages"] == [
        {
            "role": "user",
            "content": [
                text_block("What is in these?"),
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                },
                {"type": "image", "source": {"type": "url", "url": CAT_URL}},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"},
                },
            ],
        }
    ]


def test_images_from_anthropic_sdk_reach_openai_as_image_url_parts(router, scripted):
    one_model(router, scripted, "openai")
    scripted.queue("/v1/chat/completions", Json(openai_completion("A cat.")))
    reply = anthropic_client(router).messages.create(
        model="m1",
        max_tokens=100,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in these?"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                    },
                    {"type": "image", "source": {"type": "url", "url": CAT_URL}},
                ],
            }
        ],
    )
    assert [b.model_dump(exclude_none=True) for b in reply.content] == [text_block("A cat.")]
    assert upstream_body(scripted, requests=1)["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image_url", "image_url": {"url": PNG_URL}},
                {"type": "image_url", "image_url": {"url": CAT_URL}},
            ],
        }
    ]


OBJECT_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "celsius": {"type": "integer"}},
    "required": ["city", "celsius"],
}


@pytest.mark.parametrize(
    "response_format, tool_name, input_schema",
    [
        (
            {"type": "json_schema", "json_schema": {"name": "weather", "schema": OBJECT_SCHEMA}},
            "weather",
            OBJECT_SCHEMA,
        ),
        ({"type": "json_object"}, "json_response", {"type": "object"}),
    ],
    ids=["json_schema", "json_object"],
)
def test_response_format_becomes_a_forced_tool_on_anthropic(
    router, scripted, response_format, tool_name, input_schema
):
    one_model(router, scripted, "anthropic")
    answer = {"city": "Paris", "celsius": 18}
    scripted.queue(
        "/v1/messages",
        Json(
            anthropic_message(tool_use_block("toolu_9", tool_name, answer), stop_reason="tool_use")
        ),
    )
    reply = openai_client(router).chat.completions.create(
        model="m1",
        messages=[{"role": "user", "content": "Weather in Paris as JSON"}],
        response_format=response_format,
    )
    sent = upstream_body(scripted, requests=1)
    [tool] = sent["tools"]
    assert isinstance(tool.pop("description"), str)
    assert tool == {"name": tool_name, "input_schema": input_schema}
    assert sent["tool_choice"] == {"type": "tool", "name": tool_name}
    assert "response_format" not in sent
    choice = reply.choices[0]
    assert json.loads(choice.message.content) == answer
    assert choice.finish_reason == "stop" and choice.message.tool_calls is None

    # Streamed, the tool's input arrives as content deltas.
    block = tool_use_block("toolu_9", tool_name, answer)
    scripted.queue("/v1/messages", Sse(anthropic_stream(block, stop_reason="tool_use")))
    chunks = list(
        openai_client(router).chat.completions.create(
            model="m1",
            messages=[{"role": "user", "content": "Weather in Paris as JSON"}],
            response_format=response_format,
            stream=True,
        )
    )
    assert upstream_body(scripted, requests=2)["tool_choice"] == sent["tool_choice"]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == json.dumps(answer)
    assert all(d.tool_calls is None for d in deltas)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


class Weather(BaseModel):
    """The weather in a city."""

    city: str = Field(description="The city's name")
    celsius: int


def chat_openai(router, seen: list[dict[str, Any]]):
    """langchain's ChatOpenAI at the router; `seen` collects the bodies it sends."""
    from langchain_openai import ChatOpenAI

    def record(request: httpx.Request) -> None:
        seen.append(json.loads(request.content))

    return ChatOpenAI(
        base_url=f"{router.url}/v1",
        api_key=router.admin_key,
        model="m1",
        max_retries=0,
        http_client=httpx.Client(event_hooks={"request": [record]}),
    )


def anthropic_tool_choice(openai_request: dict[str, Any], tool_choice: dict[str, Any]):
    if openai_request.get("parallel_tool_calls") is False:
        return {**tool_choice, "disable_parallel_tool_use": True}
    return tool_choice


def test_langchain_structured_output_json_schema_on_anthropic(router, scripted):
    one_model(router, scripted, "anthropic")
    scripted.queue(
        "/v1/messages",
        Json(
            anthropic_message(
                tool_use_block("toolu_1", "Weather", {"city": "Paris", "celsius": 18}),
                stop_reason="tool_use",
            )
        ),
    )
    seen: list[dict[str, Any]] = []
    llm = chat_openai(router, seen).with_structured_output(Weather, method="json_schema")
    assert llm.invoke("Weather in Paris?") == Weather(city="Paris", celsius=18)

    [asked] = seen
    schema = asked["response_format"]["json_schema"]
    sent = upstream_body(scripted, requests=1)
    [tool] = sent["tools"]
    assert isinstance(tool.pop("description"), str)
    assert tool == {"name": schema["name"], "input_schema": schema["schema"]}
    assert sent["tool_choice"] == anthropic_tool_choice(
        asked, {"type": "tool", "name": schema["name"]}
    )


def test_langchain_structured_output_function_calling_on_anthropic(router, scripted):
    one_model(router, scripted, "anthropic")
    scripted.queue(
        "/v1/messages",
        Json(
            anthropic_message(
                tool_use_block("toolu_1", "Weather", {"city": "Rome", "celsius": 21}),
                stop_reason="tool_use",
            )
        ),
    )
    seen: list[dict[str, Any]] = []
    llm = chat_openai(router, seen).with_structured_output(Weather, method="function_calling")
    assert llm.invoke("Weather in Rome?") == Weather(city="Rome", celsius=21)

    [asked] = seen
    assert asked["tool_choice"] == {"type": "function", "function": {"name": "Weather"}}
    sent = upstream_body(scripted, requests=1)
    assert sent["tools"] == anthropic_tools(asked["tools"])
    assert sent["tool_choice"] == anthropic_tool_choice(asked, {"type": "tool", "name": "Weather"})


def test_langchain_bind_tools_on_anthropic(router, scripted):
    one_model(router, scripted, "anthropic")
    scripted.queue(
        "/v1/messages",
        Json(
            anthropic_message(
                text_block("Checking."),
                tool_use_block("toolu_1", "get_weather", PARIS),
                stop_reason="tool_use",
            )
        ),
    )
    seen: list[dict[str, Any]] = []
    reply = chat_openai(router, seen).bind_tools([OPENAI_TOOL]).invoke(QUESTION)
    assert reply.content == "Checking."
    assert [(c["id"], c["name"], c["args"]) for c in reply.tool_calls] == [
        ("toolu_1", "get_weather", PARIS)
    ]
    assert reply.response_metadata["finish_reason"] == "tool_calls"
    sent = upstream_body(scripted, requests=1)
    assert sent["tools"] == anthropic_tools(seen[0]["tools"]) == [ANTHROPIC_TOOL]


def test_langchain_streams_tool_calls_from_anthropic(router, scripted):
    one_model(router, scripted, "anthropic")
    blocks = [
        text_block("Checking."),
        tool_use_block("toolu_1", "get_weather", PARIS),
        tool_use_block("toolu_2", "get_weather", ROME),
    ]
    scripted.queue(
        "/v1/messages", Sse(anthropic_stream(*blocks, stop_reason="tool_use"), delay=0.01)
    )
    llm = chat_openai(router, []).bind_tools([OPENAI_TOOL])
    chunks = list(llm.stream(QUESTION))
    assert len(chunks) > 3
    message = chunks[0]
    for chunk in chunks[1:]:
        message += chunk
    assert message.content == "Checking."
    assert [(c["id"], c["name"], c["args"]) for c in message.tool_calls] == [
        ("toolu_1", "get_weather", PARIS),
        ("toolu_2", "get_weather", ROME),
    ]
    assert message.response_metadata["finish_reason"] == "tool_calls"


# --- parameter mappings -------------------------------------------------------


@pytest.mark.parametrize(
    "asked, expected",
    [
        ({}, {"max_tokens": 4096}),
        ({"max_tokens": 77}, {"max_tokens": 77}),
        ({"max_completion_tokens": 88}, {"max_tokens": 88}),
        ({"stop": ["a", "b"]}, {"max_tokens": 4096, "stop_sequences": ["a", "b"]}),
        (
            {"temperature": 1.0, "top_p": 0.5},
            {"max_tokens": 4096, "temperature": 1.0, "top_p": 0.5},
        ),
        ({"presence_penalty": 0, "frequency_penalty": 0}, {"max_tokens": 4096}),
    ],
    ids=[
        "defaults",
        "max_tokens",
        "max_completion_tokens",
        "stop-list",
        "sampling",
        "zero-penalties",
    ],
)
def test_scalar_parameters_on_anthropic(router, scripted, asked, expected):
    one_model(router, scripted, "anthropic")
    scripted.queue("/v1/messages", Json(anthropic_message(text_block("ok"))))
    r = call(
        router,
        "/v1/chat/completions",
        {"model": "m1", "messages": [{"role": "user", "content": "hi"}], **asked},
    )
    assert r.status_code == 200, r.text
    sent = upstream_body(scripted, requests=1)
    assert as_anthropic_messages(sent.pop("messages")) == [
        {"role": "user", "content": [text_block("hi")]}
    ]
    assert sent == {"model": "m1-upstream", **expected}


@pytest.mark.parametrize(
    "asked, expected",
    [
        ({"tool_choice": "auto"}, {"type": "auto"}),
        ({"tool_choice": "none"}, {"type": "none"}),
        ({"tool_choice": "required"}, {"type": "any"}),
        (
            {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
            {"type": "tool", "name": "get_weather"},
        ),
        ({"parallel_tool_calls": False}, {"type": "auto", "disable_parallel_tool_use": True}),
        (
            {"tool_choice": "required", "parallel_tool_calls": False},
            {"type": "any", "disable_parallel_tool_use": True},
        ),
    ],
    ids=["auto", "none", "required", "function", "no-parallel", "required-no-parallel"],
)
def test_tool_choice_on_anthropic(router, scripted, asked, expected):
    one_model(router, scripted, "anthropic")
    scripted.queue("/v1/messages", Json(anthropic_message(text_block("ok"))))
    r = call(
        router,
        "/v1/chat/completions",
        {
            "model": "m1",
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [OPENAI_TOOL],
            **asked,
        },
    )
    assert r.status_code == 200, r.text
    sent = upstream_body(scripted, requests=1)
    assert sent["tools"] == [ANTHROPIC_TOOL] and sent["tool_choice"] == expected
    assert "parallel_tool_calls" not in sent


@pytest.mark.parametrize(
    "asked, expected",
    [
        ({"type": "auto"}, {"tool_choice": "auto"}),
        ({"type": "none"}, {"tool_choice": "none"}),
        ({"type": "any"}, {"tool_choice": "required"}),
        (
            {"type": "tool", "name": "get_weather"},
            {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
        ),
        (
            {"type": "auto", "disable_parallel_tool_use": True},
            {"tool_choice": "auto", "parallel_tool_calls": False},
        ),
    ],
    ids=["auto", "none", "any", "tool", "no-parallel"],
)
def test_tool_choice_on_openai(router, scripted, asked, expected):
    one_model(router, scripted, "openai")
    scripted.queue("/v1/chat/completions", Json(openai_completion("ok")))
    r = call(
        router,
        "/v1/messages",
        {
            "model": "m1",
            "max_tokens": 10,
            "messages": HI,
            "tools": [ANTHROPIC_TOOL],
            "tool_choice": asked,
        },
    )
    assert r.status_code == 200, r.text
    sent = upstream_body(scripted, requests=1)
    assert sent["tools"] == [OPENAI_TOOL]
    assert {k: sent[k] for k in ("tool_choice", "parallel_tool_calls") if k in sent} == expected


@pytest.mark.parametrize(
    "content", ["18C sunny", [text_block("18C sunny")]], ids=["string", "text-block"]
)
def test_tool_results_reach_openai_as_tool_messages_with_string_content(router, scripted, content):
    one_model(router, scripted, "openai")
    scripted.queue("/v1/chat/completions", Json(openai_completion("18C.")))
    reply = anthropic_client(router).messages.create(
        model="m1",
        max_tokens=10,
        tools=[ANTHROPIC_TOOL],
        messages=[
            {"role": "user", "content": "Paris?"},
            {"role": "assistant", "content": [tool_use_block("call_1", "get_weather", PARIS)]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": content}],
            },
        ],
    )
    assert reply.content[0].text == "18C."
    assert as_openai_messages(upstream_body(scripted, requests=1)["messages"]) == [
        {"role": "user", "content": [text_block("Paris?")]},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": PARIS},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C sunny"},
    ]


@pytest.mark.parametrize(
    "stop_reason, finish_reason",
    [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length")],
)
def test_anthropic_stop_reasons_become_finish_reasons(router, scripted, stop_reason, finish_reason):
    one_model(router, scripted, "anthropic")
    usage = {"input_tokens": 7, "cache_read_input_tokens": 11, "cache_creation_input_tokens": 13}
    scripted.queue(
        "/v1/messages",
        Json(
            anthropic_message(text_block("ok"), stop_reason=stop_reason, output_tokens=3, **usage)
        ),
    )
    r = call(
        router,
        "/v1/chat/completions",
        {"model": "m1", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "m1"
    assert body["choices"][0]["finish_reason"] == finish_reason
    message = body["choices"][0]["message"]
    assert (message["role"], message["content"], message.get("tool_calls")) == (
        "assistant",
        "ok",
        None,
    )
    usage_out = body["usage"]
    assert (usage_out["prompt_tokens"], usage_out["completion_tokens"]) == (31, 3)
    assert usage_out["total_tokens"] == 34
    assert usage_out["prompt_tokens_details"]["cached_tokens"] == 11
    assert usage_out["prompt_tokens_details"]["cache_creation_tokens"] == 13


@pytest.mark.parametrize(
    "finish_reason, stop_reason",
    [("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use")],
)
def test_openai_finish_reasons_become_stop_reasons(router, scripted, finish_reason, stop_reason):
    one_model(router, scripted, "openai")
    calls = [tool_call("call_1", "get_weather", PARIS)] if finish_reason == "tool_calls" else None
    scripted.queue("/v1/chat/completions", Json(openai_completion("ok", calls, finish_reason)))
    reply = anthropic_client(router).messages.create(
        model="m1", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.stop_reason == stop_reason


# --- 5: refused parameters --------------------------------------------------


REFUSED = [
    ("n", {"n": 2}),
    ("logprobs", {"logprobs": True}),
    ("top_logprobs", {"top_logprobs": 3}),
    ("seed", {"seed": 7}),
    ("presence_penalty", {"presence_penalty": 0.5}),
    ("frequency_penalty", {"frequency_penalty": -0.5}),
    ("temperature", {"temperature": 1.5}),
]


@pytest.mark.parametrize("param, asked", REFUSED, ids=[p for p, _ in REFUSED])
def test_parameters_anthropic_cannot_honour_are_refused(router, scripted, param, asked):
    one_model(router, scripted, "anthropic")
    body = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], **asked}
    r = call(router, "/v1/chat/completions", body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert param in error.pop("message")
    assert error == {
        "type": "invalid_request_error",
        "param": param,
        "code": "unsupported_parameter",
    }
    with pytest.raises(openai.BadRequestError) as err:  # the SDK sees the same
        openai_client(router).chat.completions.create(**body)
    assert err.value.param == param and err.value.code == "unsupported_parameter"
    assert scripted.received == []


def test_a_refused_stream_is_a_plain_400_before_any_event(router, scripted):
    one_model(router, scripted, "anthropic")
    r = call(
        router, "/v1/chat/completions", {"model": "m1", "messages": HI, "stream": True, "n": 2}
    )
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["param"] == "n"
    assert scripted.received == []


def test_dropped_params_are_accepted_and_not_sent(router, scripted):
    one_model(router, scripted, "anthropic", dropParams=["seed"])
    scripted.queue("/v1/messages", Json(anthropic_message(text_block("ok"))))
    reply = openai_client(router).chat.completions.create(
        model="m1", messages=[{"role": "user", "content": "hi"}], seed=7
    )
    assert reply.choices[0].message.content == "ok"
    assert "seed" not in upstream_body(scripted, requests=1)


# Numbers as written, escapes kept, odd spacing inside values, an unknown
# vendor field: what a decode and re-encode would change. `seed` is dropped.
AS_SENT = (
    b'{"messages":[{"role":"user","content":"caf\\u00e9 \\/ \\ud83d\\ude00"}],'
    b' "model" : "m1", "temperature":1.0e0,"seed":7,'
    b'"x_vendor":{"n":[1 , 2.50],"big":123456789012345678901234567890},"max_tokens":10}'
)
AS_SHAPED = (
    b'{"messages":[{"role":"user","content":"caf\\u00e9 \\/ \\ud83d\\ude00"}],'
    b'"model":"m1-upstream","temperature":1.0e0,'
    b'"x_vendor":{"n":[1 , 2.50],"big":123456789012345678901234567890},"max_tokens":10}'
)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_same_format_body_reaches_the_provider_byte_for_byte(router, scripted, provider):
    one_model(router, scripted, provider, dropParams=["seed"])
    reply = (
        Json(openai_completion("ok"))
        if provider == "openai"
        else Json(anthropic_message(text_block("ok")))
    )
    scripted.queue(PATHS[provider], reply)
    path = "/v1/chat/completions" if provider == "openai" else "/v1/messages"
    r = httpx.post(
        router.url + path,
        content=AS_SENT,
        headers={**router.auth(router.admin_key), "content-type": "application/json"},
    )
    assert r.status_code == 200, r.text
    assert scripted.raw_bodies == [AS_SHAPED]


def test_top_k_is_refused_for_an_openai_provider_in_anthropics_shape(router, scripted):
    one_model(router, scripted, "openai")
    body = {
        "model": "m1",
        "max_tokens": 10,
        "top_k": 5,
        "messages": [{"role": "user", "content": "hi"}],
    }
    r = call(router, "/v1/messages", body)
    assert r.status_code == 400, r.text
    doc = r.json()
    assert doc["type"] == "error" and doc["error"]["type"] == "invalid_request_error"
    assert "top_k" in doc["error"]["message"]
    with pytest.raises(anthropic.BadRequestError):
        anthropic_client(router).messages.create(
            model="m1", max_tokens=10, messages=body["messages"], extra_body={"top_k": 5}
        )
    assert scripted.received == []


# --- 6: other clients and routes --------------------------------------------


@pytest.fixture
def litellm():
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch at import
    import litellm

    return litellm


def test_litellm_completion_through_the_router(router, scripted, litellm):
    one_model(router, scripted, "anthropic")
    scripted.queue(
        "/v1/messages",
        Json(anthropic_message(text_block("Bonjour."), input_tokens=12, output_tokens=4)),
    )
    reply = litellm.completion(
        model="openai/m1",
        api_base=f"{router.url}/v1",
        api_key=router.admin_key,
        messages=[{"role": "system", "content": "French."}, {"role": "user", "content": "Hello"}],
        max_tokens=50,
    )
    assert reply.choices[0].message.content == "Bonjour."
    assert reply.choices[0].finish_reason == "stop"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (12, 4)
    sent = upstream_body(scripted, requests=1)
    assert (sent["model"], sent["system"], sent["max_tokens"]) == ("m1-upstream", "French.", 50)


def test_litellm_streaming_completion_through_the_router(router, scripted, litellm):
    one_model(router, scripted, "anthropic")
    scripted.queue("/v1/messages", Sse(anthropic_stream(text_block("Bonjour à tous.")), delay=0.01))
    chunks = list(
        litellm.completion(
            model="openai/m1",
            api_base=f"{router.url}/v1",
            api_key=router.admin_key,
            messages=HI,
            stream=True,
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Bonjour à tous."
    assert upstream_body(scripted, requests=1)["stream"] is True


def test_litellm_embedding_is_routed_and_accounted(router, scripted, litellm):
    add_model(router, scripted, "e1", "openai", path=PATHS["embedding"], modelType="embedding")
    router.wait_for_config()
    scripted.queue(
        "/v1/embeddings",
        Json(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]},
                    {"object": "embedding", "index": 1, "embedding": [0.4, 0.5, 0.6]},
                ],
                "model": "text-embedding-upstream",
                "usage": {"prompt_tokens": 4, "total_tokens": 4},
            }
        ),
    )
    reply = litellm.embedding(
        model="openai/e1",
        api_base=f"{router.url}/v1",
        api_key=router.admin_key,
        input=["hello", "world"],
    )
    assert [d["embedding"] for d in reply.data] == [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]
    sent = upstream_body(scripted, requests=1)
    assert scripted.received[0][0] == "/v1/embeddings"
    assert (sent["model"], sent["input"]) == ("e1-upstream", ["hello", "world"])
    record = latest_request_record(router)
    assert (record["modelId"], record["promptTokens"]) == ("e1", 4)
    assert record["cost"] == round(4 * 0.003 / 1000, 9)


def text_completion(text: str, finish_reason: str | None = "stop", **extra: Any) -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1_700_000_000,
        "model": "instruct-upstream",
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}],
        **extra,
    }


def test_legacy_completions_pass_through(router, scripted):
    add_model(router, scripted, "c1", "openai", path=PATHS["completion"], modelType="completion")
    router.wait_for_config()
    usage = {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}
    scripted.queue("/v1/completions", Json(text_completion(" hi", usage=usage)))
    client = openai_client(router)
    reply = client.completions.create(model="c1", prompt="Say hi", max_tokens=5, echo=False)
    assert reply.choices[0].text == " hi" and reply.usage.total_tokens == 3
    asked = {"model": "c1", "prompt": "Say hi", "max_tokens": 5, "echo": False}
    assert upstream_body(scripted, requests=1) == {**asked, "model": "c1-upstream"}

    pieces = [(None, text_completion(t, None)) for t in (" h", "i", "!")]
    scripted.queue(
        "/v1/completions",
        Sse([*pieces, (None, text_completion("", "stop", usage=usage)), (None, "[DONE]")]),
    )
    chunks = list(client.completions.create(model="c1", prompt="Say hi", max_tokens=5, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == " hi!"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert upstream_body(scripted, requests=2) == {
        "model": "c1-upstream",
        "prompt": "Say hi",
        "max_tokens": 5,
        "stream": True,
    }


RESPONSE = {
    "id": "resp_1",
    "object": "response",
    "created_at": 1_700_000_000,
    "status": "completed",
    "model": "gpt-upstream",
    "output": [
        {
            "type": "message",
            "id": "msg_1",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Hello!", "annotations": []}],
        }
    ],
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "tools": [],
    "usage": {
        "input_tokens": 3,
        "output_tokens": 2,
        "total_tokens": 5,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    },
}


def test_responses_api_goes_to_the_openai_models_responses_endpoint(router, scripted):
    add_model(router, scripted, "r1", "openai")
    add_model(router, scripted, "a1", "anthropic")
    router.wait_for_config()
    scripted.queue("/v1/responses", Json(RESPONSE))
    client = openai_client(router)
    reply = client.responses.create(model="r1", input="Hi", instructions="Be nice.")
    assert reply.output_text == "Hello!"
    assert scripted.received[0][0] == "/v1/responses"
    assert upstream_body(scripted, requests=1) == {
        "model": "r1-upstream",
        "input": "Hi",
        "instructions": "Be nice.",
    }

    r = call(router, "/v1/responses", {"model": "a1", "input": "Hi"})
    assert r.status_code == 400, r.text
    assert isinstance(r.json()["error"]["message"], str)
    assert len(scripted.received) == 1


def test_model_lookup_and_unknown_models(router, scripted):
    one_model(router, scripted, "anthropic")
    client = openai_client(router)
    model = client.models.retrieve("m1")
    assert (model.id, model.object) == ("m1", "model")
    assert isinstance(model.created, int) and isinstance(model.owned_by, str)
    r = httpx.get(f"{router.url}/v1/models/m1", headers=router.auth(router.admin_key))
    assert set(r.json()) == {"id", "object", "created", "owned_by"}

    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("gtp-4")
    assert err.value.code == "model_not_found"

    chat = call(
        router,
        "/v1/chat/completions",
        {"model": "gtp-4", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert chat.status_code == 404 and chat.json()["error"]["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gtp-4", messages=[{"role": "user", "content": "hi"}])

    messages = call(
        router,
        "/v1/messages",
        {"model": "gtp-4", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert messages.status_code == 404
    doc = messages.json()
    assert doc["type"] == "error" and doc["error"]["type"] == "not_found_error"
    assert "gtp-4" in doc["error"]["message"]
    with pytest.raises(anthropic.NotFoundError):
        anthropic_client(router).messages.create(
            model="gtp-4", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
    assert scripted.received == []

    # A model's version names it too.
    scripted.queue("/v1/messages", Json(anthropic_message(text_block("ok"))))
    assert client.chat.completions.create(model="m1-upstream", messages=HI).model == "m1"

    # An agent type is a name only once it has preferences (or a rule).
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="creative", messages=HI)
    r = router.client.post("/api/agents/creative/preferences", json={"preferredModels": ["m1"]})
    assert r.status_code in (200, 201), r.text
    router.wait_for_config()
    scripted.queue("/v1/messages", Json(anthropic_message(text_block("ok"))))
    assert client.chat.completions.create(model="creative", messages=HI).model == "m1"


def test_count_tokens_goes_to_the_anthropic_endpoint(router, scripted):
    """docs/providers.md: /v1/messages/count_tokens goes to the first Anthropic
    candidate's URL + /count_tokens; an OpenAI-style model cannot count: 404."""
    add_model(router, scripted, "m1", "anthropic")
    add_model(router, scripted, "g1", "openai")
    router.wait_for_config()
    scripted.queue("/v1/messages/count_tokens", Json({"input_tokens": 12}))
    client = anthropic_client(router)
    count = client.messages.count_tokens(model="m1", messages=HI)
    assert count.input_tokens == 12
    assert scripted.received[0][0] == "/v1/messages/count_tokens"
    assert upstream_body(scripted, requests=1) == {"model": "m1-upstream", "messages": HI}
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="g1", messages=HI)
    assert len(scripted.received) == 1


# --- 7: passthrough fidelity and cache-token pricing ---------------------------


CACHE_USAGE = {
    "input_tokens": 1000,
    "output_tokens": 200,
    "cache_read_input_tokens": 3000,
    "cache_creation_input_tokens": 500,
}
CACHE_COST = round(
    1000 * 0.003 / 1000 + 200 * 0.015 / 1000 + 3000 * 0.0003 / 1000 + 500 * 0.00375 / 1000, 9
)


def test_messages_pass_through_to_anthropic_untouched_except_model(router, scripted):
    one_model(router, scripted, "anthropic")
    body = {
        "model": "m1",
        "max_tokens": 2048,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "system": [
            {
                "type": "text",
                "text": "A long shared preamble.",
                "cache_control": {"type": "ephemeral"},
            }
        ],
        "metadata": {"user_id": "u-7"},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Think, then answer: 2+2?"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Add them.", "signature": "sig-abc"},
                    {"type": "text", "text": "4"},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "text",
                        "text": "And 3+3?",
                        "cache_control": {"type": "ephemeral", "ttl": "1h"},
                    }
                ],
            },
        ],
        "top_k": 40,
        "some_future_field": {"kept": True},
    }
    scripted.queue(
        "/v1/messages",
        Json(
            anthropic_message(
                {"type": "thinking", "thinking": "Add again.", "signature": "sig-def"},
                text_block("6"),
                **CACHE_USAGE,
            )
        ),
    )
    beta = {"anthropic-version": "2023-06-01", "anthropic-beta": "interleaved-thinking-2025-05-14"}
    r = httpx.post(
        f"{router.url}/v1/messages", json=body, headers={**router.auth(router.admin_key), **beta}
    )
    assert r.status_code == 200, r.text
    assert upstream_body(scripted, requests=1) == {**body, "model": "m1-upstream"}
    headers = scripted.received[0][1]
    assert {k: headers.get(k) for k in beta} == beta  # docs/providers.md: the caller's reach it
    answer = r.json()
    assert answer["content"] == [
        {"type": "thinking", "thinking": "Add again.", "signature": "sig-def"},
        text_block("6"),
    ]
    assert answer["usage"] == CACHE_USAGE
    record = latest_request_record(router)
    assert record["cost"] == CACHE_COST and record["completionTokens"] == 200


def test_chat_completions_pass_through_to_openai_untouched_except_model(router, scripted):
    one_model(router, scripted, "openai")
    body = {
        "model": "m1",
        "messages": [
            {"role": "developer", "content": "Be exact."},
            {"role": "user", "content": "hi"},
        ],
        "n": 2,
        "logprobs": True,
        "top_logprobs": 2,
        "seed": 7,
        "presence_penalty": 0.5,
        "temperature": 1.5,
        "response_format": {"type": "json_object"},
        "service_tier": "flex",
        "some_future_field": [1, 2],
    }
    scripted.queue("/v1/chat/completions", Json(openai_completion('{"ok": true}')))
    r = call(router, "/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    assert upstream_body(scripted, requests=1) == {**body, "model": "m1-upstream"}
    assert r.json()["choices"][0]["message"]["content"] == '{"ok": true}'


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_cache_tokens_are_priced_on_the_translated_path(router, scripted, backend, stream):
    one_model(router, scripted, "anthropic")
    client = openai_client(router)
    if stream:
        scripted.queue("/v1/messages", Sse(anthropic_stream(text_block("ok"), **CACHE_USAGE)))
        chunks = list(
            client.chat.completions.create(
                model="m1", messages=HI, stream=True, stream_options={"include_usage": True}
            )
        )
        usage = chunks[-1].usage
    else:
        scripted.queue("/v1/messages", Json(anthropic_message(text_block("ok"), **CACHE_USAGE)))
        usage = client.chat.completions.create(model="m1", messages=HI).usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (4500, 200, 4700)
    assert usage.prompt_tokens_details.cached_tokens == 3000
    assert usage.prompt_tokens_details.model_dump()["cache_creation_tokens"] == 500
    record = latest_request_record(router)
    assert record["modelId"] == "m1" and record["cost"] == CACHE_COST


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_openai_cached_tokens_are_cache_reads_for_anthropic_clients(router, scripted, stream):
    one_model(router, scripted, "openai")
    usage = openai_usage(4000, 200, cached=3000)
    client = anthropic_client(router)
    if stream:
        scripted.queue("/v1/chat/completions", Sse(openai_stream("ok", usage=usage)))
        with client.messages.stream(model="m1", max_tokens=10, messages=HI) as events:
            message = events.get_final_message()
    else:
        scripted.queue("/v1/chat/completions", Json(openai_completion("ok", usage=usage)))
        message = client.messages.create(model="m1", max_tokens=10, messages=HI)
    got = message.usage
    assert (got.input_tokens, got.cache_read_input_tokens, got.output_tokens) == (1000, 3000, 200)
    record = latest_request_record(router)
    cost = round(1000 * 0.003 / 1000 + 3000 * 0.0003 / 1000 + 200 * 0.015 / 1000, 9)
    assert record["cost"] == cost


def test_messages_stream_passes_through_to_anthropic_with_thinking(router, scripted):
    one_model(router, scripted, "anthropic")
    blocks = [{"type": "thinking", "thinking": "Add them.", "signature": "sig-1"}, text_block("4")]
    scripted.queue("/v1/messages", Sse(anthropic_stream(*blocks, **CACHE_USAGE), delay=0.01))
    thinking = {"type": "enabled", "budget_tokens": 1024}
    asked = [{"role": "user", "content": "2+2?"}]
    with anthropic_client(router).messages.stream(
        model="m1", max_tokens=2048, thinking=thinking, messages=asked
    ) as stream:
        final = stream.get_final_message()
    assert upstream_body(scripted, requests=1) == {
        "model": "m1-upstream",
        "max_tokens": 2048,
        "thinking": thinking,
        "messages": asked,
        "stream": True,
    }
    assert [b.model_dump(exclude_none=True) for b in final.content] == blocks
    assert (final.usage.cache_read_input_tokens, final.usage.output_tokens) == (3000, 200)
    assert final.stop_reason == "end_turn"
    assert latest_request_record(router)["cost"] == CACHE_COST


def test_chat_completion_streams_pass_through_to_openai(router, scripted):
    one_model(router, scripted, "openai")
    events = openai_stream(
        "Hello there", [tool_call("call_1", "get_weather", PARIS)], "tool_calls", openai_usage(9, 3)
    )
    scripted.queue("/v1/chat/completions", Sse(events, delay=0.01))
    body = {"model": "m1", "stream": True, "messages": HI, "logprobs": True, "tools": [OPENAI_TOOL]}
    with httpx.stream(
        "POST",
        f"{router.url}/v1/chat/completions",
        json=body,
        headers=router.auth(router.admin_key),
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        data = [line[5:].strip() for line in r.iter_lines() if line.startswith("data:")]
    assert upstream_body(scripted, requests=1) == {**body, "model": "m1-upstream"}
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert [c["choices"] for c in chunks] == [e[1]["choices"] for e in events[:-1]]
    assert chunks[-1]["usage"] == openai_usage(9, 3)


# --- 8: errors, failover, stream attempts -------------------------------------


RATE_LIMITED = Json(
    {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}},
    status=429,
    headers={"retry-after": "7"},
)
SERVER_ERROR = Json(
    {"type": "error", "error": {"type": "api_error", "message": "boom"}}, status=500
)


def text_stream(provider: str, text: str) -> list[tuple[Any, ...]]:
    """A provider's stream that says `text`."""
    return anthropic_stream(text_block(text)) if provider == "anthropic" else openai_stream(text)


STREAM_ERRORS = {
    "anthropic": {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    "openai": {"error": {"message": "overloaded", "type": "server_error"}},
}


def broken_stream(provider: str, failure: str) -> list[tuple[Any, ...]]:
    """A stream whose first content event is replaced: by `1` (valid JSON, wrong
    shape), or by the provider's error event."""
    events = text_stream(provider, "never seen")
    first = next(
        i
        for i, (name, data, *_) in enumerate(events)
        if name == "content_block_delta"
        or (name is None and data["choices"][0]["delta"].get("content"))
    )
    if failure == "wrong-shape":
        bad = (events[first][0], "1")
    else:
        bad = ("error" if provider == "anthropic" else None, STREAM_ERRORS[provider])
    return [*events[:first], bad, *events[first + 1 :]]


@pytest.mark.parametrize("client", ["openai", "anthropic"])
def test_429_everywhere_then_503_both_with_retry_after(router, scripted, client):
    one_model(router, scripted, "anthropic", endpoints=2)
    scripted.queue("/v1/messages", RATE_LIMITED, RATE_LIMITED)
    sdk = SDKS[client]
    with pytest.raises(sdk.RateLimitError) as limited:
        ask(router, client)
    assert limited.value.status_code == 429
    assert 6 <= float(limited.value.response.headers["retry-after"]) <= 7
    assert len(scripted.received) == 2

    with pytest.raises(sdk.APIStatusError) as unavailable:
        ask(router, client)
    assert unavailable.value.status_code == 503
    assert float(unavailable.value.response.headers["retry-after"]) > 0
    assert len(scripted.received) == 2, "an endpoint was called during its Retry-After"


@pytest.mark.parametrize("client", ["openai", "anthropic"])
@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_stream_attempts_header_counts_the_failed_endpoint(router, scripted, client, provider):
    one_model(router, scripted, provider, endpoints=2)
    scripted.queue(
        PATHS[provider], SERVER_ERROR, Sse(text_stream(provider, "Hello there"), delay=0.01)
    )
    headers, text = stream_through(router, client, "m1")
    assert text == "Hello there"
    assert headers["x-model-router-attempts"] == "2"
    assert headers["x-model-router-endpoint"] == "m1-ep1"
    assert len(scripted.received) == 2


@pytest.mark.parametrize("client", ["openai", "anthropic"])
@pytest.mark.parametrize("provider", ["anthropic", "openai"])
@pytest.mark.parametrize("failure", ["wrong-shape", "error-event"])
def test_a_broken_stream_fails_over_to_the_next_model(router, scripted, client, provider, failure):
    add_model(router, scripted, "a", provider)
    add_model(router, scripted, "b", provider)
    r = router.client.post("/api/agents/creative/preferences", json={"preferredModels": ["a", "b"]})
    assert r.status_code in (200, 201), r.text
    router.wait_for_config()
    scripted.queue(
        PATHS[provider],
        Sse(broken_stream(provider, failure)),
        Sse(text_stream(provider, "From b.")),
    )
    headers, text = stream_through(router, client, "auto", **{"X-Agent-Type": "creative"})
    assert text == "From b."
    assert headers["x-model-router-model"] == "b"
    assert headers["x-model-router-attempts"] == "2"
    assert [b["model"] for b in scripted.bodies()] == ["a-upstream", "b-upstream"]


@pytest.mark.parametrize("client", ["openai", "anthropic"])
def test_an_upstream_400_goes_back_without_failover(router, scripted, client):
    one_model(router, scripted, "anthropic", endpoints=2)
    refusal = {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}
    scripted.queue("/v1/messages", Json(refusal, status=400))
    sdk = SDKS[client]
    with pytest.raises(sdk.BadRequestError):
        ask(router, client)
    assert len(scripted.received) == 1


def test_concurrent_translated_streams_do_not_mix(router, scripted):
    """Six streams at once, each answered from its own request: every caller
    gets its own text and tool call, whole."""
    one_model(router, scripted, "anthropic")

    def echo(body: dict[str, Any]) -> Sse:
        word = parts(body["messages"][0]["content"])[0]["text"]
        blocks = [
            text_block(f"echo {word} " * 3),
            tool_use_block(f"toolu_{word}", "f", {"w": word}),
        ]
        return Sse(anthropic_stream(*blocks, stop_reason="tool_use"), delay=0.01)

    words = [f"w{i}" for i in range(6)]
    scripted.queue("/v1/messages", *[echo] * len(words))
    client = openai_client(router)

    def one(word: str) -> tuple[str, str, str]:
        chunks = client.chat.completions.create(
            model="m1", messages=[{"role": "user", "content": word}], stream=True
        )
        text, call_id, arguments = "", "", ""
        for c in chunks:
            delta = c.choices[0].delta if c.choices else None
            text += (delta and delta.content) or ""
            for d in (delta and delta.tool_calls) or []:
                call_id += d.id or ""
                arguments += d.function.arguments or ""
        return text, call_id, arguments

    with ThreadPoolExecutor(len(words)) as pool:
        results = list(pool.map(one, words))
    assert results == [(f"echo {w} " * 3, f"toolu_{w}", json.dumps({"w": w})) for w in words]


WRONG_ANSWERS = {
    "anthropic": [
        {**anthropic_message(text_block("x")), "content": "not blocks"},
        anthropic_message(text_block("x"), input_tokens="12"),  # a count as a string
        [1],
    ],
    "openai": [
        {**openai_completion("x"), "choices": [1]},
        openai_completion("x", usage={"prompt_tokens": -1, "completion_tokens": 1}),
    ],
}
# Tool arguments that are not JSON cannot be made an Anthropic `input`
# (a same-format answer is passed back as sent, so only when translating).
BAD_ARGUMENTS = openai_completion(
    None,
    [{**tool_call("c", "f", {}), "function": {"name": "f", "arguments": "{oops"}}],
    "tool_calls",
)


@pytest.mark.parametrize("client", ["openai", "anthropic"])
@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_wrong_shaped_answers_fail_over_never_500(router, scripted, client, provider):
    """docs/providers.md: an answer of the wrong shape is `malformed` and fails over."""
    wrong = WRONG_ANSWERS[provider] + (
        [BAD_ARGUMENTS] if (provider, client) == ("openai", "anthropic") else []
    )
    one_model(router, scripted, provider, endpoints=2)
    right = (
        anthropic_message(text_block("fine"))
        if provider == "anthropic"
        else openai_completion("fine")
    )
    for body in wrong:
        scripted.queue(PATHS[provider], Json(body), Json(right))
    for i, _ in enumerate(wrong):
        reply = ask(router, client)
        text = reply.choices[0].message.content if client == "openai" else reply.content[0].text
        assert text == "fine"
        assert len(scripted.received) == 2 * (i + 1)


@pytest.mark.parametrize("client", ["openai", "anthropic"])
def test_an_error_after_the_first_content_ends_the_stream_with_an_error(router, scripted, client):
    """docs/providers.md: once content reached the caller there is no failover:
    the stream ends with an error event, which the SDK raises."""
    one_model(router, scripted, "anthropic", endpoints=2)
    events = anthropic_stream(text_block("Hello there, friend"))
    first = next(i for i, e in enumerate(events) if e[0] == "content_block_delta")
    error = ("error", STREAM_ERRORS["anthropic"])
    scripted.queue("/v1/messages", Sse([*events[: first + 1], error], delay=0.01))
    sdk = SDKS[client]
    text = ""
    with pytest.raises(sdk.APIError):
        if client == "openai":
            for chunk in openai_client(router).chat.completions.create(
                model="m1", messages=HI, stream=True
            ):
                text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
        else:
            with anthropic_client(router).messages.stream(
                model="m1", max_tokens=50, messages=HI
            ) as stream:
                for piece in stream.text_stream:
                    text += piece
    assert text == events[first][1]["delta"]["text"]
    assert len(scripted.received) == 1
