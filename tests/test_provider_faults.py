"""Providers that hang, stall or answer nonsense, against a real router (real
Granian workers) on loopback: every wait is bounded, every oddity is a failed
attempt, and a hung provider costs callers nothing once it has been found out."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import scripted_upstream
from scripted_upstream import Sse, openai_stream

from conftest import model_body

scripted = scripted_upstream.scripted  # the fixture

CHAT = {"model": "auto", "messages": [{"role": "user", "content": "hello"}]}
HEADERS = {"X-Agent-Type": "creative"}


@pytest.fixture(params=["redis"])
def backend(request):
    """Shared breakers matter across workers: the store between them is Redis."""
    return request.param


def register(router, model_id: str, url: str, **endpoint: object) -> None:
    c = router.client
    body = model_body(model_id, breaker={"cooldownMs": 1000, "failureThreshold": 3})
    assert c.post("/api/models", json=body).status_code == 201
    r = c.post(
        f"/api/models/{model_id}/endpoints", json={"id": f"{model_id}-ep", "url": url, **endpoint}
    )
    assert r.status_code == 201, r.text


def stream_chat(router) -> tuple[int, str]:
    """A streamed chat completion through the router: its status and whole body."""
    with httpx.stream(
        "POST",
        f"{router.url}/v1/chat/completions",
        headers={**router.auth(router.admin_key), **HEADERS},
        json={**CHAT, "stream": True},
        timeout=10,
    ) as r:
        return r.status_code, r.read().decode()


def prefer(router, *model_ids: str) -> None:
    r = router.client.post(
        "/api/agents/creative/preferences", json={"preferredModels": list(model_ids)}
    )
    assert r.status_code in (200, 201), r.text


def test_a_hung_model_costs_callers_nothing_after_the_first_second(make_server, make_mock):
    router = make_server(workers=2, MODEL_ROUTER_REQUEST_TIMEOUT_MS="3000")
    hung = make_mock("openai", latency_ms=600_000)  # accepts, never answers
    healthy = make_mock("openai", latency_ms=20)
    register(router, "hung", hung.operation_url, timeoutMs=400)
    register(router, "healthy", healthy.operation_url)
    prefer(router, "hung", "healthy")
    router.wait_for_config()
    auth = {**router.auth(router.admin_key), **HEADERS}

    # The healthy model's own latency through the router, measured first.
    with httpx.Client(base_url=router.url, headers=auth, timeout=10) as c:
        baseline = []
        for _ in range(30):
            started = time.perf_counter()
            assert (
                c.post("/v1/chat/completions", json={**CHAT, "model": "healthy"}).status_code == 200
            )
            baseline.append(time.perf_counter() - started)
    healthy_latency = max(baseline)  # its worst, on this shared machine

    results: list[tuple[float, float, int, str]] = []  # (sent at, took, status, attempts)
    lock = threading.Lock()
    start = time.perf_counter()

    def caller(offset: float) -> None:
        with httpx.Client(base_url=router.url, headers=auth, timeout=10) as c:
            n = 0
            while (sent := start + offset + n * 0.1) < start + 4.0:  # 10 req/s per caller
                time.sleep(max(0.0, sent - time.perf_counter()))
                t0 = time.perf_counter()
                r = c.post("/v1/chat/completions", json=CHAT)
                attempts = r.headers.get("x-model-router-attempts", "")
                with lock:
                    results.append((t0 - start, time.perf_counter() - t0, r.status_code, attempts))
                n += 1

    threads = [threading.Thread(target=caller, args=(i / 60,)) for i in range(6)]  # 60 req/s
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(results) >= 200 and all(status == 200 for _, _, status, _ in results)
    assert max(took for _, took, _, _ in results) < 3.0, "a request outlived its deadline"
    late = [(sent, took, attempts) for sent, took, _, attempts in results if sent >= 1.0]
    # After the first second no caller is sent to the hung model: one attempt
    # each, the healthy model's...
    tried = [(round(s, 3), a) for s, _, a in late if a != "1"]
    assert not tried, f"{len(tried)} of {len(late)} requests after 1 s tried the hung model"
    # ...and none waits near its 0.4 s timeout (the margin is this shared
    # machine's: two test processes run beside the router).
    limit = healthy_latency + 0.2
    slow = [(round(s, 3), round(t, 3), a) for s, t, a in late if t > limit]
    assert not slow, f"{len(slow)} of {len(late)} requests after 1 s took > {limit:.3f} s: {slow}"
    # The hung endpoint kept being probed by the router (cooldown 1 s), never by a caller.
    assert hung.requests() >= 3


def test_a_stream_that_stalls_ends_with_an_error_event_not_silence(make_server, scripted):
    router = make_server()
    register(
        router,
        "m1",
        scripted.url + "/v1/chat/completions",
        streamIdleTimeoutMs=300,
    )
    prefer(router, "m1")
    router.wait_for_config()
    events = openai_stream("one two three four")
    stalled = [*events[:2], (events[2][0], events[2][1], 5.0), *events[3:]]  # 5 s of silence
    scripted.queue("/v1/chat/completions", Sse(stalled))
    started = time.perf_counter()
    status, body = stream_chat(router)
    took = time.perf_counter() - started
    assert status == 200
    assert took < 1.5, f"the stall was waited out ({took:.2f} s)"
    assert '"upstream_error"' in body and "[DONE]" not in body
    time.sleep(1.2)
    recent = router.client.get("/api/metrics/requests?limit=1").json()["data"][0]
    assert recent["outcome"] == "stream_error"


def test_a_stream_broken_after_its_first_content_counts_against_its_endpoint(make_server, scripted):
    """Too late to fail over, but the endpoint's failure all the same: with a
    threshold of one failure its breaker opens, on every worker."""
    router = make_server()
    body = model_body("m1", breaker={"cooldownMs": 60_000, "failureThreshold": 1})
    assert router.client.post("/api/models", json=body).status_code == 201
    endpoint = {"id": "m1-ep", "url": scripted.url + "/v1/chat/completions"}
    assert router.client.post("/api/models/m1/endpoints", json=endpoint).status_code == 201
    prefer(router, "m1")
    router.wait_for_config()
    events = openai_stream("one two three")
    # The bad event comes once the first content is out (before it, it would fail over).
    scripted.queue("/v1/chat/completions", Sse([*events[:2], (None, "1", 0.3), *events[2:]]))
    status, text = stream_chat(router)
    assert status == 200 and '"upstream_error"' in text
    time.sleep(1.0)  # the opening is shared within BREAKER_SYNC_MS
    for _ in range(4):  # whichever worker answers
        r = httpx.post(
            f"{router.url}/v1/chat/completions",
            headers={**router.auth(router.admin_key), **HEADERS},
            json=CHAT,
        )
        assert r.status_code == 503 and r.json()["error"]["type"] == "breakers_open", r.text
    assert len(scripted.received) == 1


@pytest.mark.parametrize(
    "bad",
    ["1", '{"choices": [1]}', '{"choices": [], "usage": {"prompt_tokens": -5}}'],
    ids=["scalar", "wrong-choice", "negative-tokens"],
)
def test_nonsense_after_the_first_content_ends_the_stream_and_counts_against_it(
    make_server, scripted, bad
):
    router = make_server()
    register(router, "m1", scripted.url + "/v1/chat/completions")
    prefer(router, "m1")
    router.wait_for_config()
    events = openai_stream("one two three")
    # The bad event comes once the first content is out (before it, it would fail over).
    scripted.queue("/v1/chat/completions", Sse([*events[:2], (None, bad, 0.3), *events[2:]]))
    status, body = stream_chat(router)
    assert status == 200
    assert '"upstream_error"' in body and "[DONE]" not in body
    time.sleep(1.2)
    recent = router.client.get("/api/metrics/requests?limit=1").json()["data"][0]
    assert recent["outcome"] == "stream_error"
