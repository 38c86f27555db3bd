"""The translators on the size the translation issue names: a 20-message
tool conversation (tests/fixtures/openai_tool_conversation.json: system,
tool calls, parallel tool results, images), each way.

    .venv/bin/pytest bench/test_translators.py --benchmark-only

Target: both ways together, median <= 50 us. The same-format path does none
of this work: it only sets `model`.
"""

from __future__ import annotations

import json
from pathlib import Path

from model_router.engine.translate import to_anthropic, to_openai

CONVERSATION = json.loads(
    (Path(__file__).parents[1] / "tests" / "fixtures" / "openai_tool_conversation.json").read_text()
)
NO_DROP: frozenset[str] = frozenset()
AS_ANTHROPIC = to_anthropic.request(CONVERSATION, "claude-x", 4096, NO_DROP)


def test_openai_request_to_anthropic(benchmark):
    body = benchmark(to_anthropic.request, CONVERSATION, "claude-x", 4096, NO_DROP)
    assert len(body["messages"]) == 11


def test_anthropic_request_to_openai(benchmark):
    body = benchmark(to_openai.request, AS_ANTHROPIC, "gpt-x", NO_DROP)
    assert len(body["messages"]) == 20


def test_both_ways(benchmark):
    def both_ways() -> dict:
        anthropic = to_anthropic.request(CONVERSATION, "claude-x", 4096, NO_DROP)
        return to_openai.request(anthropic, "gpt-x", NO_DROP)

    assert len(benchmark(both_ways)["messages"]) == 20
    median_us = benchmark.stats.stats.median * 1e6
    print(f"\ntranslation both ways: median {median_us:.1f} us (target <= 50 us)")
