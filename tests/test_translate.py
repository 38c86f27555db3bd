"""The translators in process, on recorded provider-shaped fixtures: the
in-process layer under the end-to-end tests of test_sdk_roundtrips.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from model_router.engine.exchanges import (
    EXCHANGES,
    AnthropicEvents,
    Format,
    OpenAIChunks,
    Operation,
)
from model_router.engine.sse import EventReader
from model_router.engine.translate import Refused, Tokens, to_anthropic, to_openai, wire

FIXTURES = Path(__file__).parent / "fixtures"
NO_DROP: frozenset[str] = frozenset()


def conversation() -> dict[str, Any]:
    return json.loads((FIXTURES / "openai_tool_conversation.json").read_text())


def events(name: str) -> list:
    return EventReader().feed((FIXTURES / name).read_bytes())


def chunks_of(out: list[bytes]) -> list[dict[str, Any]]:
    return [
        json.loads(piece[6:])
        for piece in out
        if piece.startswith(b"data: ") and piece != b"data: [DONE]\n\n"
    ]


def anthropic_events_of(out: list[bytes]) -> list[dict[str, Any]]:
    return [json.loads(piece.split(b"\ndata: ", 1)[1]) for piece in out]


# --- requests ------------------------------------------------------------------------


def test_a_tool_conversation_becomes_anthropic_turns():
    chat = conversation()
    body = to_anthropic.request(chat, "claude-x", 4096, NO_DROP)
    assert body["system"] == "You are a travel agent. Use the tools to answer."
    assert body["model"] == "claude-x" and body["max_tokens"] == 800
    assert body["stop_sequences"] == ["END"] and body["metadata"] == {"user_id": "user-42"}
    roles = [m["role"] for m in body["messages"]]
    assert all(a != b for a, b in zip(roles, roles[1:], strict=False)), "roles must alternate"
    first_call = body["messages"][1]
    assert first_call["role"] == "assistant"
    assert first_call["content"] == [
        {
            "type": "tool_use",
            "id": "call_w0",
            "name": "get_weather",
            "input": {"city": "Paris", "unit": "celsius"},
        },
        {"type": "tool_use", "id": "call_t0", "name": "get_time", "input": {"city": "Rome"}},
    ]
    # Two tool results and the next user message: one user turn, results first.
    results = body["messages"][2]["content"]
    assert [b["type"] for b in results] == ["tool_result", "tool_result", "text", "image"]
    assert results[0] == {
        "type": "tool_result",
        "tool_use_id": "call_w0",
        "content": '{"city": "Paris", "temp": 18, "sky": "clear"}',
    }
    assert results[3]["source"] == {
        "type": "base64",
        "media_type": "image/png",
        "data": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk",
    }
    assert body["messages"][3]["content"][0] == {
        "type": "text",
        "text": "Checking Rome and Berlin.",
    }
    assert body["tools"][0]["input_schema"]["required"] == ["city"]
    assert body["tool_choice"] == {"type": "auto"}


def test_anthropic_and_back_gives_the_same_openai_conversation():
    chat = conversation()
    anthropic = to_anthropic.request(chat, "claude-x", 4096, NO_DROP)
    back = to_openai.request(anthropic, "gpt-x", NO_DROP)
    # Content arrays of user messages come back as parts; strings stay strings.
    assert [m["role"] for m in back["messages"]] == [m["role"] for m in chat["messages"]]
    for ours, theirs in zip(back["messages"], chat["messages"], strict=True):
        assert ours.get("tool_call_id") == theirs.get("tool_call_id")
        if theirs["role"] == "assistant":
            calls = [
                (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
                for c in ours["tool_calls"]
            ]
            assert calls == [
                (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
                for c in theirs["tool_calls"]
            ]
            assert ours["content"] == theirs["content"]
        else:
            assert ours["content"] == theirs["content"]
    assert back["tools"] == chat["tools"] and back["tool_choice"] == "auto"
    assert back["stop"] == ["END"] and back["user"] == "user-42"


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("n", 2),
        ("logprobs", True),
        ("top_logprobs", 3),
        ("seed", 7),
        ("presence_penalty", 0.5),
        ("frequency_penalty", -1),
        ("logit_bias", {"50256": -100}),
        ("reasoning_effort", "high"),
        ("audio", {"voice": "alloy"}),
        ("made_up_parameter", 1),
    ],
)
def test_what_anthropic_cannot_do_is_refused_by_name(param, value):
    chat = {"messages": [{"role": "user", "content": "hi"}], param: value}
    with pytest.raises(Refused) as refused:
        to_anthropic.request(chat, "m", 4096, NO_DROP)
    assert refused.value.param == param and param in refused.value.message
    # ... unless the model drops it, when it is left out.
    body = to_anthropic.request(chat, "m", 4096, frozenset({param}))
    assert param not in body


def test_defaults_of_unsupported_parameters_are_not_refused():
    chat = {
        "messages": [{"role": "user", "content": "hi"}],
        "n": 1,
        "logprobs": False,
        "presence_penalty": 0,
        "seed": None,
    }
    assert to_anthropic.request(chat, "m", 4096, NO_DROP)["messages"][0]["content"] == "hi"


@pytest.mark.parametrize(
    ("chat", "param"),
    [
        ({"temperature": 1.5}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 2}, "top_p"),
        ({"stop": 123}, "stop"),
        ({"user": {"id": 1}}, "user"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "array"}},
                }
            },
            "response_format.json_schema.schema",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "messages[0].content[0].type",
        ),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "c", "function": {"name": "f", "arguments": "{not json"}}
                        ],
                    }
                ]
            },
            "messages[0].tool_calls[0].function.arguments",
        ),
    ],
)
def test_bad_or_out_of_range_values_name_the_parameter(chat, param):
    request = {"messages": [{"role": "user", "content": "hi"}], **chat}
    with pytest.raises(Refused) as refused:
        to_anthropic.request(request, "m", 4096, NO_DROP)
    assert refused.value.param == param


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"top_k": 5}, "top_k"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
        ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
        (
            {"messages": [{"role": "user", "content": [{"type": "search_result"}]}]},
            "messages[0].content[0].type",
        ),
    ],
)
def test_what_openai_style_models_cannot_do_is_refused_by_name(body, param):
    request = {"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], **body}
    with pytest.raises(Refused) as refused:
        to_openai.request(request, "m", NO_DROP)
    assert refused.value.param == param


def test_response_format_is_a_forced_tool_and_comes_back_as_content():
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    chat = {
        "messages": [{"role": "user", "content": "where?"}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "Place", "schema": schema},
        },
    }
    body = to_anthropic.request(chat, "m", 4096, NO_DROP)
    assert body["tools"] == [
        {"name": "Place", "description": "Answer with this JSON object.", "input_schema": schema}
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "Place"}
    message = wire.AnthropicMessage(
        content=[
            wire.AnthropicBlock(type="tool_use", id="t", name="Place", input={"city": "Oslo"})
        ],
        id="1",
        stop_reason="tool_use",
    )
    out = to_openai.response(message, Tokens(5, 6), "m", to_anthropic.json_tool(chat))
    choice = out["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": '{"city":"Oslo"}'}
    assert choice["finish_reason"] == "stop"


# --- answers and streams -----------------------------------------------------------------


def test_an_anthropic_tool_stream_becomes_openai_chunks_with_cache_usage():
    reader = EXCHANGES[(Operation.CHAT, Format.ANTHROPIC)].stream(
        {"stream_options": {"include_usage": True}}, "claude-mock"
    )
    out = [
        piece for event in events("anthropic_tool_use_stream.sse") for piece in reader.feed(event)
    ]
    assert out[-1] == b"data: [DONE]\n\n" and reader.state.done
    chunks = chunks_of(out)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Okay, let's check the weather for San Francisco, CA:"
    calls: dict[int, dict[str, str]] = {}
    for c in chunks:
        for call in (c["choices"][0]["delta"].get("tool_calls") or []) if c["choices"] else []:
            entry = calls.setdefault(call["index"], {"arguments": ""})
            entry.update({k: call[k] for k in ("id",) if k in call})
            if "name" in call.get("function", {}):
                entry["name"] = call["function"]["name"]
            entry["arguments"] += call["function"].get("arguments", "")
    assert calls == {
        0: {
            "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            "name": "get_weather",
            "arguments": '{"location": "San Francisco, CA", "unit": "fahrenheit"}',
        },
        1: {"id": "toolu_02Ab", "name": "get_time", "arguments": '{"tz": "PST"}'},
    }
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "tool_calls" and finishes.count("tool_calls") == 1
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 472 + 100 + 2048,
        "completion_tokens": 89,
        "total_tokens": 472 + 100 + 2048 + 89,
        "prompt_tokens_details": {"cached_tokens": 2048, "cache_creation_tokens": 100},
    }
    assert reader.state.tokens == Tokens(2620, 89, 2048, 100)


def test_an_openai_tool_stream_becomes_anthropics_event_sequence():
    reader = EXCHANGES[(Operation.MESSAGES, Format.OPENAI)].stream({}, "gpt-mock")
    out = [
        piece for event in events("openai_tool_calls_stream.sse") for piece in reader.feed(event)
    ]
    sequence = anthropic_events_of(out)
    assert [e["type"] for e in sequence] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert sequence[1]["content_block"] == {
        "type": "tool_use",
        "id": "call_abc123",
        "name": "get_weather",
        "input": {},
    }
    args = "".join(
        e["delta"]["partial_json"] for e in sequence if e.get("index") == 0 and "delta" in e
    )
    assert json.loads(args) == {"location": "Paris"}
    assert sequence[5]["index"] == 1 and sequence[5]["content_block"]["name"] == "get_time"
    assert sequence[-2]["delta"]["stop_reason"] == "tool_use"
    assert sequence[-2]["usage"] == {
        "input_tokens": 1200 - 1024,
        "output_tokens": 45,
        "cache_read_input_tokens": 1024,
        "cache_creation_input_tokens": 0,
    }


def test_same_format_streams_pass_every_event_through_untouched():
    for name, reader in (
        ("anthropic_tool_use_stream.sse", AnthropicEvents()),
        ("openai_tool_calls_stream.sse", OpenAIChunks()),
    ):
        raw = (FIXTURES / name).read_bytes()
        out = b"".join(piece for event in events(name) for piece in reader.feed(event))
        assert out == raw
        assert reader.state.done and reader.state.tokens.completion in (89, 45)


@pytest.mark.parametrize(
    ("reader", "data"),
    [
        (AnthropicEvents, b"1"),
        (AnthropicEvents, b'{"type": "message_start", "message": 1}'),
        (
            AnthropicEvents,
            b'{"type":"message_delta","delta":{},"usage":{"output_tokens":"12"}}',
        ),
        (OpenAIChunks, b'{"choices": [1]}'),
        (OpenAIChunks, b'{"choices": [], "usage": {"prompt_tokens": -5, "completion_tokens": 1}}'),
        (
            OpenAIChunks,
            b'{"choices": [], "usage": {"prompt_tokens": 18446744073709551615}}',
        ),
    ],
)
def test_events_of_the_wrong_shape_raise_rather_than_pass(reader, data):
    with pytest.raises(msgspec.ValidationError):
        reader().feed(EventReader().feed(b"data: " + data + b"\n\n")[0])


def test_an_openai_answer_with_tool_calls_becomes_an_anthropic_message():
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Let me look.",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {
            "prompt_tokens": 30,
            "completion_tokens": 9,
            "prompt_tokens_details": {"cached_tokens": 10},
        },
    }
    answer = EXCHANGES[(Operation.MESSAGES, Format.OPENAI)].answer(
        msgspec.json.encode(body), {}, "gpt-mock"
    )
    message = json.loads(answer.body)
    assert message["content"] == [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}},
    ]
    assert message["stop_reason"] == "tool_use" and message["model"] == "gpt-mock"
    assert message["usage"] == {
        "input_tokens": 20,
        "output_tokens": 9,
        "cache_read_input_tokens": 10,
        "cache_creation_input_tokens": 0,
    }
