"""Restarts, several workers, the bootstrap admin key."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time

import httpx

from conftest import model_body, rule_body
from model_router.http import new_id
from model_router.periodic import cancel_all, every


def test_a_forked_worker_mints_ids_of_its_own():
    """Granian forks its workers from a process that has minted ids already:
    each child draws its own prefix, or workers would hand out the same ids."""
    parent = new_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, new_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert len(child) == len(parent) == 22
    assert child[:12] != parent[:12] and new_id()[:12] == parent[:12]


def test_everything_survives_a_restart(make_server):
    server = make_server()
    c = server.client
    c.post("/api/models", json=model_body("m1"))
    c.post("/api/models/m1/endpoints", json={"url": "http://127.0.0.1:9/v1/chat/completions"})
    c.post("/api/models/m1/health", json={"status": "degraded", "errorRate": 0.2})
    c.post("/api/routing/rules", json=rule_body("m1", id="r1"))
    c.post("/api/agents/creative/preferences", json={"preferredModels": ["m1"]})
    c.post("/api/workspaces/ws-1/config", json={"complianceRequirements": ["gdpr"]})
    key = c.post("/api/keys", json={"role": "viewer"}).json()["key"]
    before = c.get("/api/config/export").json()

    server.restart()

    after = c.get("/api/config/export").json()
    assert after["config"] == before["config"] and after["configVersion"] == before["configVersion"]
    assert c.get("/api/models/m1/health").json()["status"] == "degraded"
    assert c.get("/api/models", headers=server.auth(key)).status_code == 200
    detailed = httpx.get(f"{server.url}/health/detailed").json()
    assert detailed["components"]["config"]["models"] == 1
    assert detailed["components"]["config"]["rules"] == 1


def _versions_seen(server, want_pids: int, seconds: float = 5.0) -> dict[int, int]:
    """Config version per worker pid, over fresh connections (they spread)."""
    seen: dict[int, int] = {}
    deadline = time.time() + seconds
    while len(seen) < want_pids and time.time() < deadline:
        body = httpx.get(f"{server.url}/health/detailed", headers={"Connection": "close"}).json()
        seen[body["workerPid"]] = body["components"]["config"]["version"]
    return seen


def test_a_write_reaches_every_worker_within_a_second(make_server):
    server = make_server(workers=2)
    assert len(_versions_seen(server, 2)) == 2, "requests never reached the second worker"
    for round in range(3):
        r = server.client.post("/api/models", json=model_body(f"m{round}"))
        assert r.status_code == 201
        version = server.client.get("/api/config/export").json()["configVersion"]
        time.sleep(1.0)
        seen = _versions_seen(server, 2)
        assert len(seen) == 2 and all(v >= version for v in seen.values()), (version, seen)


def test_request_ids_are_unique_across_workers(make_server):
    """Each worker draws its own id prefix: forked from one parent, they
    handed out the same ids (X-Request-Id, request records)."""
    server = make_server(workers=2)
    pids, ids = set(), set()
    for _ in range(60):
        r = httpx.get(f"{server.url}/health/detailed", headers={"Connection": "close"})
        pids.add(r.json()["workerPid"])
        ids.add(r.headers["x-request-id"])
    assert len(pids) == 2, "requests never reached the second worker"
    assert len(ids) == 60


def test_a_generated_admin_key_is_printed_once(make_server):
    server = make_server(MODEL_ROUTER_ADMIN_KEY="")
    printed = re.findall(r"mr_[0-9a-f]+_[\w-]+", server.log_path.read_text())
    assert len(printed) == 1
    assert server.client.get("/api/keys", headers=server.auth(printed[0])).status_code == 200
    server.restart()
    assert re.findall(r"mr_[0-9a-f]+_[\w-]+", server.log_path.read_text()) == printed
    assert httpx.get(f"{server.url}/api/models").status_code == 401  # never open


def test_stopping_waits_for_cancelled_background_work_only_so_long(caplog):
    """A background task that does not end when cancelled (a config reload
    in flight on Redis did not, now and then) holds the stop no longer than
    its bound: the final flushes still run, and the log says which task."""

    async def stubborn() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(30)  # ignores the cancellation

    async def obedient() -> None:
        await asyncio.sleep(30)

    async def scenario() -> None:
        tasks = [asyncio.create_task(stubborn()), asyncio.create_task(obedient())]
        await asyncio.sleep(0)
        started = time.monotonic()
        await cancel_all(tasks, 0.2)
        assert time.monotonic() - started < 1
        assert tasks[1].cancelled() and not tasks[0].done()
        tasks[0].cancel()

    with caplog.at_level(logging.WARNING, logger="model_router.periodic"):
        asyncio.run(scenario())
    assert "still running after 0.2 s: " in caplog.text and "stubborn" in caplog.text


def test_a_beat_stopped_during_a_round_lets_the_round_finish():
    """A flush cut off after its write landed, but before it knew, would be
    sent again by the final flush of a stopping worker (spend counted
    twice): the beat stops between rounds, never in one."""
    landed: list[int] = []
    in_round = asyncio.Event()

    async def flush() -> None:
        in_round.set()
        await asyncio.sleep(0.2)  # the write, in flight
        landed.append(1)

    async def scenario() -> None:
        beat = asyncio.create_task(every(1, "flush", flush))
        await in_round.wait()
        await cancel_all([beat], 2.0)
        assert beat.cancelled()
        assert landed == [1]

    asyncio.run(scenario())
