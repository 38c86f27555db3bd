"""The core's readings of what callers and providers send, against the
Python definitions they must agree with: same-format shaping (shape.rs)
against a decoder's reading of the body, the reading of whole answers
(wire.rs) against translate/wire.py, and the door's reading of a chat call
(chat.rs) against `ChatCompletionRequest`. Differential, with hypothesis:
bodies of nearly the right shape, now and then any JSON value in a field's
place."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_router import types as t
from model_router._core import (
    read_anthropic_message,
    read_chat_call,
    read_openai_chat,
    read_openai_chunk,
    same_format_body,
)
from model_router.engine.exchanges import EXCHANGES, Format, OpenAIChunks, Operation
from model_router.engine.inputs import content_length
from model_router.engine.sse import Event
from model_router.engine.translate import Refused, Tokens, wire

SCALARS = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=8)
json_values = st.recursive(
    SCALARS | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)
NAMES = st.sampled_from(["model", "seed", "temperature", "messages", "x", "\u00e9"]) | st.text(
    max_size=6
)


@given(
    st.lists(st.tuples(NAMES, json_values), max_size=8),
    st.sets(NAMES, max_size=3),
    st.booleans(),
)
def test_same_format_shaping_reads_as_the_body_with_model_set_and_drops_out(members, drop, spaced):
    """What the provider reads is what a decoder reads from the caller's body,
    `model` set in its place (else last), the dropped parameters gone; a
    member sent twice is read once, with its last value."""
    encode = (lambda v: json.dumps(v).encode()) if spaced else msgspec.json.encode
    sep, colon = (b" , ", b" : ") if spaced else (b",", b":")
    raw = b"{" + sep.join(encode(k) + colon + encode(v) for k, v in members) + b"}"
    read = msgspec.json.decode(raw)
    expected = {**{k: v for k, v in read.items() if k not in drop or k == "model"}, "model": "v"}
    shaped = same_format_body(raw, "v", sorted(drop))
    assert list(msgspec.json.decode(shaped).items()) == list(expected.items())


def test_a_same_format_body_the_core_cannot_read_is_refused_not_raised():
    model = t.SnapshotModel("m", "v", "openai", "chat", "active", [], [], None, [], None, [], None)
    with pytest.raises(Refused) as refused:
        EXCHANGES[(Operation.CHAT, Format.OPENAI)].body(b"[1]", {}, model)
    assert refused.value.code == "invalid_json" and "JSON object" in refused.value.message


def _or_wrong(right: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the right shape, now and then any JSON value in its place."""
    return st.one_of(right, right, right, json_values)


def _fields(optional: dict[str, st.SearchStrategy[Any]], **required: st.SearchStrategy[Any]):
    return st.fixed_dictionaries(
        {k: _or_wrong(v) for k, v in required.items()},
        optional={k: _or_wrong(v) for k, v in optional.items()},
    )


COUNTS = st.integers(-2, 10**8 + 2) | st.sampled_from([0, 5, 1.0, "3", True])
TEXTS = st.none() | st.text(max_size=6)
TOOL_CALL = _fields(
    {
        "id": TEXTS,
        "type": TEXTS,
        "index": st.integers(-1, 3),
        "function": _fields({"name": TEXTS, "arguments": TEXTS}),
    }
)
OPENAI_ANSWERS = _fields(
    {
        "id": st.text(max_size=4),
        "usage": st.none()
        | _fields(
            {
                "prompt_tokens": COUNTS,
                "completion_tokens": COUNTS,
                "prompt_tokens_details": st.none()
                | _fields(
                    {
                        "cached_tokens": st.none() | COUNTS,
                        "cache_creation_tokens": st.none() | COUNTS,
                    }
                ),
            }
        ),
    },
    choices=st.lists(
        _fields(
            {"finish_reason": TEXTS},
            message=_fields(
                {
                    "content": TEXTS,
                    "refusal": TEXTS,
                    "tool_calls": st.none() | st.lists(TOOL_CALL, max_size=2),
                }
            ),
        ),
        max_size=2,
    ),
)
ANTHROPIC_ANSWERS = _fields(
    {
        "id": st.text(max_size=4),
        "stop_reason": TEXTS,
        "usage": st.none()
        | _fields(
            {
                name: st.none() | COUNTS
                for name in (
                    "input_tokens",
                    "output_tokens",
                    "cache_read_input_tokens",
                    "cache_creation_input_tokens",
                )
            }
        ),
    },
    content=st.lists(
        _fields(
            {"text": TEXTS, "id": TEXTS, "name": TEXTS, "thinking": TEXTS, "input": json_values},
            type=st.sampled_from(["text", "tool_use", "thinking"]),
        ),
        max_size=3,
    ),
)


def _python_openai_reading(body: bytes) -> tuple[Any, ...]:
    completion = wire.decode_openai_completion(body)
    tokens = Tokens()
    if completion.usage is not None:
        tokens.add_openai(completion.usage)
    choice = completion.choices[0]
    text, finish = choice.message.content or "", choice.finish_reason
    return tokens.prompt, tokens.completion, tokens.cache_read, tokens.cache_write, text, finish


def _python_anthropic_reading(body: bytes) -> tuple[Any, ...]:
    message = wire.decode_anthropic_message(body)
    tokens = Tokens()
    if message.usage is not None:
        tokens.add_anthropic(message.usage)
    text = "".join(b.text or "" for b in message.content if b.type == "text")
    return (
        tokens.prompt,
        tokens.completion,
        tokens.cache_read,
        tokens.cache_write,
        text,
        message.stop_reason,
    )


def _same_reading(core: Any, python: Any, body: bytes) -> None:
    try:
        expected = python(body)
    except msgspec.ValidationError:
        with pytest.raises(ValueError):
            core(body)
        return
    assert core(body) == expected


@given(OPENAI_ANSWERS)
def test_the_core_reads_an_openai_answer_as_wire_py_declares_it(doc):
    """The core's reading of a same-format answer (wire.rs) and wire.py's
    typed one accept the same answers and read the same counts and text."""
    _same_reading(read_openai_chat, _python_openai_reading, msgspec.json.encode(doc))


@given(ANTHROPIC_ANSWERS)
def test_the_core_reads_an_anthropic_answer_as_wire_py_declares_it(doc):
    _same_reading(read_anthropic_message, _python_anthropic_reading, msgspec.json.encode(doc))


OPENAI_CHUNKS = _fields(
    {
        "id": st.text(max_size=4),
        "choices": st.lists(
            _fields(
                {
                    "index": st.integers(0, 2),
                    "finish_reason": TEXTS,
                    "delta": st.none()
                    | _fields(
                        {
                            "content": TEXTS,
                            "refusal": TEXTS,
                            "tool_calls": st.none() | st.lists(TOOL_CALL, max_size=2),
                        }
                    ),
                }
            ),
            max_size=2,
        ),
        "usage": OPENAI_ANSWERS.map(lambda doc: doc.get("usage")),
        "error": st.none() | json_values,
    }
)


def _python_chunk_reading(data: bytes) -> tuple[Any, ...]:
    reader = OpenAIChunks()
    reader.feed(Event(None, data, data))
    state, tokens = reader.state, reader.state.tokens
    counts = (tokens.prompt, tokens.completion, tokens.cache_read, tokens.cache_write)
    return state.error is not None, state.started, state.text_chars, counts


@given(OPENAI_CHUNKS)
def test_the_door_reads_a_stream_chunk_as_the_apps_reader_does(doc):
    """A stream's event, as the door reads it (wire.rs) and as the app's
    `OpenAIChunks` does: the same chunks refused, the same verdicts and counts."""
    _same_reading(read_openai_chunk, _python_chunk_reading, msgspec.json.encode(doc))


DEEP = b"[" * 300 + b"]" * 300  # past serde_json's 128 levels of a whole tree


def test_members_the_router_does_not_read_are_skipped_whatever_their_depth_or_numbers():
    """A tool's deeply nested input, a number no float holds in a member
    nobody reads, a count of -0: wire.py reads these answers, so must the core."""
    tool_use = b'{"type": "tool_use", "id": "t", "name": "f", "input": ' + DEEP + b"}"
    usage = b'"usage": {"input_tokens": -0, "output_tokens": 2}'
    anthropic = b'{"content": [' + tool_use + b'], "x": 1e999, ' + usage + b"}"
    assert read_anthropic_message(anthropic) == _python_anthropic_reading(anthropic)
    assert read_anthropic_message(anthropic)[:2] == (0, 2)
    openai = b'{"choices": [{"message": {"content": "a"}, "logprobs": ' + DEEP + b'}], "n": -1e999}'
    assert read_openai_chat(openai) == _python_openai_reading(openai)


def _python_chat_facts(body: bytes) -> tuple[Any, ...]:
    raw = msgspec.json.decode(body)
    checked = msgspec.convert(raw, t.ChatCompletionRequest)
    return checked.model, checked.stream, checked.user, content_length(None, checked.messages)


MESSAGE = _fields(
    {
        "role": st.sampled_from(["user", "system"]),
        "content": st.none()
        | st.text(max_size=8)
        | st.lists(_fields({"type": st.just("text"), "text": st.text(max_size=5)}), max_size=2),
    }
)
CHAT_CALLS = _fields(
    {
        "stream": st.booleans(),
        "max_tokens": st.none() | st.integers(-1, 3),
        "max_completion_tokens": st.none() | st.integers(-1, 3) | st.just(2**70),
        "temperature": st.none() | st.floats(-0.5, 2.5) | st.integers(-1, 3),
        "top_p": st.none() | st.floats(-0.5, 1.5),
        "n": st.none() | st.integers(0, 130),
        "stop": st.none() | st.text(max_size=3) | st.lists(st.text(max_size=2), max_size=18),
        "user": st.none() | st.text(max_size=3) | st.just("u" * 257),
        "seed": st.integers(),
    },
    model=st.text(max_size=4) | st.just("m" * 257),
    messages=st.lists(MESSAGE, max_size=3),
)


@settings(max_examples=400)  # a body passes all its checks about one time in 18
@given(CHAT_CALLS)
def test_the_door_reads_only_chat_calls_python_accepts_and_reads_them_alike(doc):
    """What the door would serve itself, Python accepts, with the same model,
    stream, user and text length; what it leaves, Python may refuse."""
    body = msgspec.json.encode(doc)
    facts = read_chat_call(body)
    if facts is not None:
        assert facts == _python_chat_facts(body)


def test_the_door_reads_the_chat_calls_sdks_send():
    """(So the test above cannot pass by the door reading nothing.)"""
    sdk = {
        "model": "gpt-x",
        "messages": [{"role": "user", "content": "héllo"}],
        "temperature": 0.7,
        "max_tokens": 64,
        "stream": False,
    }
    body = msgspec.json.encode(sdk)
    assert read_chat_call(body) == _python_chat_facts(body) == ("gpt-x", False, None, 5)
