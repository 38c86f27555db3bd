"""docs/routing.md's worked example, run against a real server."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path

import httpx

DOC = (Path(__file__).parent.parent / "docs" / "routing.md").read_text()


def block(name: str) -> dict:
    return json.loads(re.search(rf"```json {name}\n(.*?)```", DOC, re.S).group(1))


def _imported(server) -> None:
    r = server.client.post("/api/config/import", json=block("example-config"))
    assert r.status_code == 200, r.text
    want = r.json()["configVersion"]
    deadline = time.time() + 2
    while (
        httpx.get(f"{server.url}/health/detailed").json()["components"]["config"]["version"] < want
    ):
        assert time.time() < deadline
        time.sleep(0.02)


def test_the_worked_example_decides_as_documented(server):
    _imported(server)
    d = server.client.post("/api/routing/test", json=block("example-request")).json()
    expected = block("example-decision")
    assert d["source"] == expected["source"]
    assert d["candidates"] == expected["candidates"]
    assert d["excluded"] == expected["excluded"]


def test_the_long_prompt_takes_the_rule_with_its_canary_split(server):
    _imported(server)
    request = {**block("example-request"), "prompt": "x" * 120}
    firsts = Counter()
    for _ in range(400):
        d = server.client.post("/api/routing/test", json=request).json()
        assert d["rule"]["id"] == "long-creative"
        assert sorted(c["modelId"] for c in d["candidates"]) == ["claude-3-sonnet", "gpt-3.5-turbo"]
        assert {"modelId": "gpt-4", "reason": "missing compliance hipaa"} in d["excluded"]
        firsts[d["candidates"][0]["modelId"]] += 1
    # 90/10 split: the canary's share of 400 picks lies within 10% +- 5 sigma.
    assert 10 <= firsts["gpt-3.5-turbo"] <= 70, firsts
