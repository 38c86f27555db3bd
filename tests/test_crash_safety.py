"""A worker killed outright keeps what it answered more than the flush
interval before (request records and spend), SIGTERM lets requests and
streams in flight finish, and a second instance refuses a port in use."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time

import httpx
import pytest
import redis

from conftest import EDGES, ROUTER, model_body

PRICE = {"inputPer1k": 0.01, "outputPer1k": 0.03}
CHAT = {"model": "m1", "messages": [{"role": "user", "content": "Hello"}]}
# The documented loss bound (flush interval) plus a flush's own time, on a busy machine.
LOSS_WINDOW_S = 0.2


def setup_model(server, mock) -> None:
    c = server.client
    assert c.post("/api/models", json=model_body("m1", pricing=PRICE)).status_code == 201
    endpoint = {"url": mock.operation_url, "apiKeyEnv": "MOCK_PROVIDER_KEY"}
    assert c.post("/api/models/m1/endpoints", json=endpoint).status_code == 201
    server.wait_for_config()


def worker_pid(server) -> int:
    return httpx.get(f"{server.url}/health/detailed", timeout=5).json()["workerPid"]


def model_spend_nanos(server) -> int:
    """Today's spend counter of model m1, read from the store itself."""
    if "REDIS_URL" in server.env:
        store = redis.Redis.from_url(server.env["REDIS_URL"])
        prefix = "{" + server.env["MODEL_ROUTER_REDIS_NAMESPACE"] + "}:counter:"
        keys = list(store.scan_iter(f"{prefix}spend:model:m1:d:*"))
        return sum(int(store.get(k) or 0) for k in keys)
    path = os.path.join(server.env["MODEL_ROUTER_DATA_DIR"], "model-router.sqlite3")
    with sqlite3.connect(path) as db:
        row = db.execute(
            "SELECT SUM(value) FROM counters WHERE name LIKE 'spend:model:m1:d:%'"
        ).fetchone()
    return int(row[0] or 0)


def test_kill_9_of_a_worker_loses_at_most_the_last_flush_interval(make_server, make_mock):
    server = make_server(workers=1, MOCK_PROVIDER_KEY="k")
    setup_model(server, make_mock("openai"))
    victim = worker_pid(server)
    answered: list[tuple[float, str, float]] = []  # (when, request id, cost)
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=server.url, headers=server.client.headers) as c:
            while not stop.is_set() and len(answered) < 800:
                try:
                    r = c.post("/api/route", json={"agentType": "a", "prompt": "hi", "model": "m1"})
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    cost = r.json()["usage"]["cost"]
                    answered.append((time.monotonic(), r.headers["x-request-id"], cost))

    sender = threading.Thread(target=traffic)
    sender.start()
    time.sleep(1.0)
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    stop.set()
    sender.join(10)

    deadline = time.time() + 20
    while True:  # Granian respawns the worker
        assert time.time() < deadline, "no worker came back"
        try:
            if worker_pid(server) != victim:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    settled = [a for a in answered if a[0] < killed_at - LOSS_WINDOW_S]
    assert len(settled) > 50, len(settled)
    listed = server.client.get("/api/metrics/requests", params={"limit": 1000}).json()["data"]
    recorded = {x["requestId"] for x in listed}
    lost = [rid for _, rid, _ in settled if rid not in recorded]
    assert not lost, f"{len(lost)} of {len(settled)} settled requests lost their record"
    settled_nanos = sum(round(c * 1e9) for *_, c in settled)
    assert model_spend_nanos(server) >= settled_nanos - len(settled)  # rounding per request


@pytest.mark.parametrize("edge", EDGES)
def test_sigterm_lets_requests_and_streams_in_flight_finish(make_server, make_mock):
    server = make_server(workers=1, MOCK_PROVIDER_KEY="k", MODEL_ROUTER_SHUTDOWN_GRACE_S="10")
    setup_model(server, make_mock("openai", latency_ms=1500, stream_chunks=6))
    results: dict[str, object] = {}

    def plain() -> None:
        r = httpx.post(
            f"{server.url}/v1/chat/completions", json=CHAT, headers=server.auth(server.admin_key)
        )
        results["plain"] = (r.status_code, r.json()["choices"][0]["message"]["content"])

    def stream() -> None:
        with httpx.stream(
            "POST",
            f"{server.url}/v1/chat/completions",
            json={**CHAT, "stream": True},
            headers=server.auth(server.admin_key),
        ) as r:
            results["stream"] = (r.status_code, r.read().decode())

    threads = [threading.Thread(target=plain), threading.Thread(target=stream)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGTERM)  # what Kubernetes sends to PID 1
    for t in threads:
        t.join(15)
    assert results["plain"][0] == 200 and results["plain"][1], results  # type: ignore[index]
    status, events = results["stream"]  # type: ignore[misc]
    assert status == 200 and events.rstrip().endswith("data: [DONE]"), events
    assert server.proc.wait(15) == 0


@pytest.mark.parametrize("edge", EDGES)
def test_a_second_instance_refuses_a_port_in_use(server, tmp_path):
    second = subprocess.run(
        [str(ROUTER), "serve"], env=server.env, capture_output=True, text=True, timeout=30
    )
    assert second.returncode == 1
    assert f"cannot listen on 127.0.0.1:{server.port}" in second.stderr
    assert httpx.get(f"{server.url}/health").status_code == 200

    with socket.socket() as other:  # not a model-router at all
        other.bind(("127.0.0.1", 0))
        other.listen()
        env = {**server.env, "PORT": str(other.getsockname()[1])}
        third = subprocess.run([str(ROUTER), "serve"], env=env, capture_output=True, timeout=30)
        assert third.returncode == 1
