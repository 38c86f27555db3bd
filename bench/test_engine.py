"""The engine's hot calls from Python, at the size the routing issue names:
100 models x 3 endpoints, 500 rules, 50 workspaces.

    make bench            # or: .venv/bin/pytest bench/test_engine.py --benchmark-only

Targets: decide() median <= 5 us and p99 <= 20 us; record() median <= 2 us;
loading the snapshot <= 20 ms. p99 is measured per call over 100,000 calls
(perf_counter_ns, whose own cost of ~0.1 us is included).
"""

from __future__ import annotations

import random
import time

import msgspec
import pytest

from model_router._core import Engine

AGENTS = [f"agent-{i}" for i in range(20)]
REQUEST_TYPES = ["chat", "completion", "embedding", "image", "audio"]


def snapshot_document(seed: int = 7) -> bytes:
    rnd = random.Random(seed)
    models = [
        {
            "id": f"model-{i}",
            "version": f"model-{i}-v1",
            "provider": rnd.choice(["openai", "anthropic", "azure", "custom"]),
            "modelType": "chat",
            "status": "active" if i % 10 else "inactive",
            "capabilities": [{"type": "text-generation"}, {"type": "function-calling"}],
            "compliance": rnd.sample(["gdpr", "hipaa", "ccpa", "soc2"], 2),
            "pricing": {
                "inputPer1k": rnd.uniform(0.0005, 0.03),
                "outputPer1k": rnd.uniform(0.001, 0.06),
            },
            "tags": ["bench"],
            "health": {
                "status": rnd.choice(["healthy", "healthy", "degraded"]),
                "responseTime": 400,
            },
            "endpoints": [
                {
                    "id": f"model-{i}-ep-{k}",
                    "url": f"http://127.0.0.1:9/{i}/{k}/v1/chat/completions",
                    "type": ["primary", "secondary", "backup"][k],
                    "weight": 1.0 + k,
                }
                for k in range(3)
            ],
        }
        for i in range(100)
    ]
    rules = []
    for r in range(500):
        condition: dict[str, object] = {
            "agentType": [rnd.choice(AGENTS)],
            "requestType": rnd.sample(REQUEST_TYPES, 2),
            "contentLength": {"min": rnd.randint(0, 2000), "max": rnd.randint(2000, 8000)},
        }
        if r % 3 == 0:
            condition["workspaceId"] = [f"ws-{rnd.randint(0, 49)}"]
        if r % 5 == 0:
            condition["metadata"] = {"priority": rnd.choice(["high", "low"])}
        targets = rnd.sample(range(100), 4)
        rules.append(
            {
                "id": f"rule-{r}",
                "name": f"rule {r}",
                "priority": rnd.randint(0, 1000),
                "enabled": True,
                "createdAt": f"2026-01-01T00:00:{r % 60:02d}Z",
                "condition": condition,
                "trafficSplit": {"primary": 90, "canary": 10},
                "targetModels": [
                    {
                        "modelId": f"model-{t}",
                        "weight": 1.0,
                        "fallbackOrder": n,
                        "role": "canary" if n == 3 else "primary",
                    }
                    for n, t in enumerate(targets)
                ],
            }
        )
    workspaces = {
        f"ws-{w}": {
            "modelRestrictions": [f"model-{m}" for m in rnd.sample(range(100), 60)],
            "budgetLimits": {"daily": 1000, "monthly": 20000},
            "qualityRequirements": {"maxLatency": 5000, "minSuccessRate": 0.9},
            "complianceRequirements": ["gdpr"] if w % 2 else [],
        }
        for w in range(50)
    }
    prefs = {
        a: {
            "preferredModels": [f"model-{m}" for m in rnd.sample(range(100), 3)],
            "requiredCapabilities": ["text-generation"],
            "performanceRequirements": {"maxLatency": 8000, "maxCostPerToken": 0.0001},
        }
        for a in AGENTS
    }
    return msgspec.json.encode(
        {
            "version": 1,
            "settings": {"failOpen": False, "minSamples": 20},
            "models": models,
            "rules": rules,
            "agentPreferences": prefs,
            "workspaceConfigs": workspaces,
        }
    )


@pytest.fixture(scope="module")
def document() -> bytes:
    return snapshot_document()


@pytest.fixture(scope="module")
def engine(document: bytes) -> Engine:
    e = Engine(seed=1)
    e.load(document)
    # Rolling stats as a warm router has them.
    for i in range(100):
        for _ in range(50):
            e.record(f"model-{i}", f"model-{i}-ep-0", True, 300.0 + i, 100, 200, "ws-1")
    return e


REQUEST = dict(
    workspace_id="ws-13",
    user_id="user-42",
    request_type="chat",
    content_length=2400,
    metadata={"priority": "high", "requestType": "chat"},
    limit=3,
)


def decide_once(engine: Engine) -> object:
    return engine.decide("agent-7", **REQUEST)


def percentiles(fn, calls: int = 100_000) -> dict[str, float]:
    samples = []
    clock = time.perf_counter_ns
    for _ in range(calls):
        start = clock()
        fn()
        samples.append(clock() - start)
    samples.sort()
    return {"p50_us": samples[calls // 2] / 1000, "p99_us": samples[calls * 99 // 100] / 1000}


def test_decide(benchmark, engine):
    d = decide_once(engine)
    assert d.candidates and d.error is None, d.error
    benchmark.extra_info.update(percentiles(lambda: decide_once(engine)))
    benchmark(decide_once, engine)
    print(f"\ndecide: {benchmark.extra_info}")


DEFAULT = dict(workspace_id="ws-13", request_type="chat", limit=3)


def test_decide_default_ranking(benchmark, engine):
    """No rule and no preferences: every model is checked and scored; the
    executor asks for as many candidates as it may attempt."""
    d = engine.decide("unknown-agent", **DEFAULT)
    assert d.source == "default" and len(d.candidates) == 3
    benchmark.extra_info.update(percentiles(lambda: engine.decide("unknown-agent", **DEFAULT)))
    benchmark(engine.decide, "unknown-agent", **DEFAULT)
    print(f"\ndecide (default ranking): {benchmark.extra_info}")


# The executor's call, positional as it makes it: breaker, stats, cost and
# the outcome rollups (outcome, agent type, rule, failover_from, ttft, and the
# rollout and variant: None, as for a request in no canary or experiment).
RECORD = ("model-3", "model-3-ep-0", True, 412.0, 120, 250, "ws-13", None, 0, 0, None)
RECORD += ("success", "agent-7", "rule-42", None, None, None, None)


def test_record(benchmark, engine):
    benchmark.extra_info.update(percentiles(lambda: engine.record(*RECORD)))
    benchmark(engine.record, *RECORD)
    print(f"\nrecord: {benchmark.extra_info}")


@pytest.mark.gate_on_min  # allocation-bound: its median doubles under others' load
def test_load_snapshot(benchmark, document):
    e = Engine(seed=1)
    benchmark(e.load, document)
    assert e.model_count == 100 and e.endpoint_count == 300 and e.rule_count == 500
    print(f"\nload: snapshot of {len(document)} bytes")
