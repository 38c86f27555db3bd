"""The store going away, hanging, coming back, coming back empty: routing goes
on from the last good config, admin calls are 503 `store_unavailable`, and
what was counted meanwhile reaches the store when it answers again.

Each test runs its own redis-server (the one `make test` shares is never
stopped), restarted on the same port to play an outage or a wipe.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis

from conftest import ROUTER, Server, free_port, model_body
from model_router.ratelimit import LEASE, RETRY_MS, RateLimiter
from model_router.settings import Settings
from model_router.store import open_store
from model_router.store.redis import ADD_COUNTERS

CHAT = {"model": "m1", "messages": [{"role": "user", "content": "Hello"}]}


class RedisServer:
    """A redis-server of one test's own; `persistent` keeps its data across a
    restart (append-only file, fsync on every write), else a restart wipes it."""

    def __init__(self, workdir: Path, persistent: bool):
        self.port = free_port()
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir()
        self.persistent = persistent
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("no redis-server: run `make test`, which installs it")
        persistence = ["--appendonly", "yes", "--appendfsync", "always"]
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
        args += ["--save", "", *(persistence if self.persistent else ["--appendonly", "no"])]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                redis.Redis(port=self.port, socket_timeout=0.2).ping()
                return self
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)


@pytest.fixture
def own_redis(tmp_path):
    servers: list[RedisServer] = []

    def make(persistent: bool = True) -> RedisServer:
        servers.append(RedisServer(tmp_path, persistent).start())
        return servers[-1]

    yield make
    for s in servers:
        if s.proc is not None and s.proc.poll() is None:
            s.proc.send_signal(signal.SIGCONT)  # in case a test left it stopped
        s.stop()


@pytest.fixture
def start_router(tmp_path, make_mock):
    """A router (2 workers) on the given store env, with model m1 on a mock
    provider and an agent key; returns (server, agent key)."""
    servers: list[Server] = []

    def start(env: dict[str, str]) -> tuple[Server, str]:
        mock = make_mock("openai")
        env = {**env, "MODEL_ROUTER_WORKERS": "2", "MOCK_PROVIDER_KEY": "k"}
        server = Server(env, tmp_path)
        servers.append(server)
        server.start()
        c = server.client
        assert c.post("/api/models", json=model_body("m1", pricing=PRICE)).status_code == 201
        endpoint = {"url": mock.operation_url, "apiKeyEnv": "MOCK_PROVIDER_KEY"}
        assert c.post("/api/models/m1/endpoints", json=endpoint).status_code == 201
        key = c.post("/api/keys", json={"role": "agent"}).json()["key"]
        server.wait_for_config()
        # Warm both workers' key caches (an unknown key needs the store).
        for _ in range(20):
            routed(server, key)
        return server, key

    yield start
    for server in servers:
        server.close()


PRICE = {"inputPer1k": 0.01, "outputPer1k": 0.03}


def routed(server: Server, key: str) -> httpx.Response:
    """One chat completion on a fresh connection (connections spread over workers)."""
    return httpx.post(
        f"{server.url}/v1/chat/completions",
        json=CHAT,
        headers={**server.auth(key), "Connection": "close"},
        timeout=10,
    )


def health(server: Server, path: str) -> httpx.Response:
    return httpx.get(f"{server.url}{path}", headers={"Connection": "close"}, timeout=5)


def redis_env(r: RedisServer) -> dict[str, str]:
    return {"REDIS_URL": r.url, "MODEL_ROUTER_REDIS_NAMESPACE": "faults"}


def test_routing_continues_while_redis_is_down_and_counts_reach_it_after(own_redis, start_router):
    r = own_redis(persistent=True)
    server, key = start_router(redis_env(r))
    r.stop()

    started = time.perf_counter()
    answers = [routed(server, key) for _ in range(60)]
    elapsed = time.perf_counter() - started
    assert [a.status_code for a in answers] == [200] * 60
    assert elapsed < 10, f"60 routed requests took {elapsed:.1f}s with the store down"
    ids = {a.headers["x-request-id"] for a in answers}

    assert health(server, "/health").status_code == 200
    ready = health(server, "/health/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["store"]["status"] == "down"
    detailed = health(server, "/health/detailed")
    assert detailed.status_code == 200 and detailed.json()["status"] == "degraded"

    admin = server.client.get("/api/models")
    assert admin.status_code == 503
    assert admin.json()["error"]["type"] == "store_unavailable"
    assert "routing continues" in admin.json()["error"]["message"]
    openai_shape = httpx.post(
        f"{server.url}/v1/chat/completions", json=CHAT, headers=server.auth("mr_abc_unknown")
    )
    # Keys live in each worker's config: an unknown one is refused without the
    # store (docs/deployment.md), in OpenAI's error shape, never a 500.
    assert openai_shape.status_code == 401
    assert openai_shape.json()["error"]["type"] == "unauthorized"
    log = server.log_path.read_text()
    assert "Traceback" not in log and "store unavailable" in log

    r.start()
    deadline = time.time() + 5
    records: list[dict] = []
    while time.time() < deadline and not ids <= {x["requestId"] for x in records}:
        time.sleep(0.2)
        listed = server.client.get("/api/metrics/requests", params={"limit": 1000})
        if listed.status_code == 200:
            records = listed.json()["data"]
    lost = ids - {x["requestId"] for x in records}
    assert not lost, f"{len(lost)} records of the outage never reached Redis"

    time.sleep(1.5)  # one rate-limit sync
    store = r.client()
    key_id = key.split("_")[1]
    counted = sum(int(store.get(k)) for k in store.scan_iter(f"{{faults}}:counter:rl:{key_id}:*"))
    # The warm-up and every request of the outage, plus at most the lease the
    # worker holds unspent (limits are taken from the store a lease at a time).
    assert 20 + 60 <= counted <= 20 + 60 + LEASE
    spend = sum(int(store.get(k)) for k in store.scan_iter("{faults}:counter:spend:model:m1:d:*"))
    routed_cost = sum(round(x["cost"] * 1e9) for x in records if x["modelId"] == "m1")
    assert len(records) == 80 and abs(spend - routed_cost) <= 80  # nano-dollar rounding
    assert health(server, "/health/detailed").json()["status"] == "healthy"


class AnswerLosingProxy:
    """A TCP proxy in front of Redis that loses Redis's answer to the first
    command carrying `marker`: the command lands, and its sender never hears
    of it (an answer lost on the network; the sender times out)."""

    def __init__(self, redis_port: int, marker: bytes):
        self._to, self._marker = redis_port, marker
        self.lost = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self._listener.getsockname()[1]}/0"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(("127.0.0.1", self._to))
            lose = threading.Event()  # the next answer on this connection
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst, lose), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, lose: threading.Event) -> None:
        from_redis = src.getpeername()[1] == self._to
        try:
            while data := src.recv(65536):
                if not from_redis and self._marker in data and not self.lost.is_set():
                    self.lost.set()
                    lose.set()
                if from_redis and lose.is_set():
                    lose.clear()
                    continue
                dst.sendall(data)
        except OSError:
            pass
        finally:
            src.close()
            dst.close()

    def close(self) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept
        self._listener.close()


def test_spend_whose_write_landed_but_whose_answer_was_lost_is_counted_once(
    own_redis, start_router
):
    """The write of a spend flush lands, its answer is lost, the flush times
    out: sent again as it was, it is not counted a second time (it was, when
    a failed flush gave its amounts back for the next one)."""
    r = own_redis(persistent=True)
    r.client().script_load(ADD_COUNTERS)  # else the lost answer may be "load the script first"
    proxy = AnswerLosingProxy(r.port, b"counter:spend:model:m1:")
    env = {**redis_env(r), "REDIS_URL": proxy.url, "MODEL_ROUTER_STORE_TIMEOUT_MS": "300"}
    try:
        server, key = start_router(env)
        answers = [routed(server, key) for _ in range(20)]
        assert [a.status_code for a in answers] == [200] * 20
        assert proxy.lost.wait(5)
        costs: dict[str, int] = {}
        spend = -1
        deadline = time.time() + 10
        while time.time() < deadline and not (len(costs) == 40 and spend == sum(costs.values())):
            time.sleep(0.3)  # the timeout, and the flushes after it
            listed = server.client.get("/api/metrics/requests", params={"limit": 1000})
            costs = {x["id"]: round(x["cost"] * 1e9) for x in listed.json()["data"]}
            names = r.client().scan_iter("{faults}:counter:spend:model:m1:d:*")
            spend = sum(int(r.client().get(name) or 0) for name in names)
    finally:
        proxy.close()
    assert len(costs) == 40 and abs(spend - sum(costs.values())) <= 40  # nano-dollar rounding


def test_a_record_whose_push_landed_but_whose_answer_was_lost_is_listed_once(
    own_redis, start_router
):
    """The records' push lands, its answer is lost: sent again as it was, the
    store holds it twice, and /api/metrics/requests lists each record once."""
    r = own_redis(persistent=True)
    proxy = AnswerLosingProxy(r.port, b"LPUSH")
    env = {**redis_env(r), "REDIS_URL": proxy.url, "MODEL_ROUTER_STORE_TIMEOUT_MS": "300"}
    try:
        server, _ = start_router(env)  # its 20 warm-up calls are recorded
        assert proxy.lost.wait(5)
        held, ids = 0, []
        deadline = time.time() + 10
        while time.time() < deadline and not (held > 20 and len(set(ids)) == 20):
            time.sleep(0.3)  # the timeout, and the push sent again
            held = r.client().llen("{faults}:recent")
            listed = server.client.get("/api/metrics/requests", params={"limit": 1000})
            ids = [x["id"] for x in listed.json()["data"]]
    finally:
        proxy.close()
    assert held > 20, "the lost push was not sent again"
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 20


def test_a_window_the_store_counts_full_admits_no_more_once_it_is_back(own_redis):
    """A worker counted alone while Redis was down; Redis is back, holds its
    counts and says the window is full: the worker refuses, rather than
    counting another limit's worth on its own."""
    r = own_redis(persistent=True)

    async def scenario() -> list[bool]:
        store = open_store(Settings.from_env(redis_env(r)))
        limiter = RateLimiter(store, 10, 60_000)
        now_ms = int(time.time() * 1000)
        assert all([(await limiter.admit("k", now_ms)).admitted for _ in range(3)])
        await asyncio.sleep(0.1)  # background top-ups land
        r.stop()
        for _ in range(12):
            await limiter.admit("k", now_ms)
        await asyncio.sleep(0.1)  # a top-up started meanwhile fails too
        r.start()
        await asyncio.sleep(RETRY_MS / 1000)  # the store is asked again from here
        await limiter.reconcile()
        after = [(await limiter.admit("k", now_ms)).admitted for _ in range(5)]
        await store.close()
        return after

    assert asyncio.run(scenario()) == [False] * 5


def test_a_hung_redis_costs_routing_nothing_and_admin_calls_a_bounded_503(own_redis, start_router):
    r = own_redis(persistent=True)
    server, key = start_router({**redis_env(r), "MODEL_ROUTER_STORE_TIMEOUT_MS": "300"})
    assert r.proc is not None
    r.proc.send_signal(signal.SIGSTOP)  # accepts connections, never answers
    try:
        answers = [routed(server, key) for _ in range(20)]
        assert [a.status_code for a in answers] == [200] * 20
        started = time.perf_counter()
        admin = server.client.get("/api/models")
        waited = time.perf_counter() - started
        assert admin.status_code == 503 and waited < 2.0, (admin.status_code, waited)
        ready = health(server, "/health/ready")
        assert ready.status_code == 200 and ready.elapsed.total_seconds() < 1.0
    finally:
        r.proc.send_signal(signal.SIGCONT)
    assert server.client.get("/api/models").status_code == 200


def test_a_redis_that_comes_back_empty_is_not_adopted_until_an_import(
    own_redis, start_router, tmp_path
):
    r = own_redis(persistent=False)
    server, key = start_router(redis_env(r))
    backup = tmp_path / "backup.json"
    backup.write_bytes(server.client.get("/api/config/export").content)
    served = health(server, "/health/detailed").json()["components"]["config"]

    r.stop()
    r.start()  # empty: no config, no keys, no epoch
    time.sleep(1.0)  # several config polls

    answers = [routed(server, key) for _ in range(40)]
    assert [a.status_code for a in answers] == [200] * 40  # config and cached keys kept
    assert health(server, "/health/ready").status_code == 200
    for _ in range(4):  # each worker reports it
        config = health(server, "/health/detailed").json()["components"]["config"]
        assert config["version"] == served["version"] and config["status"] == "stale"
        reset = config["storeReset"]
        assert reset["storeEpoch"] is None and reset["servedEpoch"] == served["epoch"]
    assert "model_router_store_reset 1.0" in httpx.get(f"{server.url}/metrics").text
    for _ in range(2):  # a write would answer 2xx and never be routed under: refused
        refused = server.client.post("/api/models", json=model_body("m2"))
        assert refused.status_code == 409 and refused.json()["error"]["type"] == "store_reset"

    env = {**server.env, "MODEL_ROUTER_ADMIN_KEY": ""}
    imported = subprocess.run(
        [str(ROUTER), "config", "import", str(backup), "--mode", "replace"],
        env=env,
        capture_output=True,
        timeout=30,
    )
    assert imported.returncode == 0, imported.stderr
    time.sleep(1.0)  # pub/sub, else the poll

    for _ in range(4):
        config = health(server, "/health/detailed").json()["components"]["config"]
        assert "storeReset" not in config and config["status"] == "up"
        assert config["epoch"].startswith("imported-") and config["models"] == 1
    assert "model_router_store_reset 0.0" in httpx.get(f"{server.url}/metrics").text
    answers = [routed(server, key) for _ in range(20)]
    assert [a.status_code for a in answers] == [200] * 20
    assert server.client.post("/api/models", json=model_body("m2")).status_code == 201
    # The keys the wipe lost were written back from the workers' caches.
    assert json.loads(r.client().hget("{faults}:doc:keys", key.split("_")[1]) or b"null")


def test_a_router_started_without_its_store_is_alive_but_not_ready(own_redis, tmp_path):
    r = own_redis(persistent=True)
    r.stop()
    server = Server({**redis_env(r), "MODEL_ROUTER_WORKERS": "1"}, tmp_path)
    log = server.log_path.open("ab")
    server.proc = subprocess.Popen(
        [str(ROUTER), "serve"], env=server.env, stdout=log, stderr=log, start_new_session=True
    )
    try:
        deadline = time.time() + 20
        while True:
            assert time.time() < deadline, server.log_path.read_text()
            try:
                if health(server, "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert health(server, "/health/ready").status_code == 503
        assert health(server, "/health/detailed").json()["status"] == "unhealthy"
        r.start()
        deadline = time.time() + 5
        while health(server, "/health/ready").status_code != 200:
            assert time.time() < deadline, "never became ready once the store answered"
            time.sleep(0.1)
    finally:
        server.close()


def test_a_locked_sqlite_file_is_a_503_not_a_500(make_mock, tmp_path):
    data = tmp_path / "data"
    server = Server(
        {"MODEL_ROUTER_DATA_DIR": str(data), "MODEL_ROUTER_STORE_TIMEOUT_MS": "200"}, tmp_path
    )
    try:
        server.start()
        lock = sqlite3.connect(data / "model-router.sqlite3", isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # what a wedged writer looks like
        try:
            r = server.client.post("/api/models", json=model_body("m2"))
            assert r.status_code == 503 and r.json()["error"]["type"] == "store_unavailable"
            assert health(server, "/health/ready").status_code == 200
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        assert server.client.post("/api/models", json=model_body("m2")).status_code == 201
        assert "Traceback" not in server.log_path.read_text()
    finally:
        server.close()
