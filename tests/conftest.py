"""Test harness: real servers on loopback, real stores.

Every API test drives a real `model-router serve` process over HTTP. Store
tests and servers run once on SQLite and once on a real Redis: the private one
`make test` starts (MODEL_ROUTER_TEST_REDIS_URL), or one this file starts. Run
in parallel (`pytest -n`, as `make test` does), each pytest-xdist worker starts
its own: tests count the commands a Redis has served.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from model_router.settings import Settings
from model_router.store import open_store

ROUTER = Path(sys.executable).parent / "model-router"
BACKENDS = ["sqlite", "redis"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def within_one_minute(seconds: float) -> None:
    """Waits, if need be, for the next minute, so that the next `seconds` fall
    inside one minute of the clock: the window the per-minute limits count in."""
    if time.time() % 60 > 60 - seconds:
        time.sleep(60.5 - time.time() % 60)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("MODEL_ROUTER_TEST_REDIS_URL")
    if url and "PYTEST_XDIST_WORKER" not in os.environ:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("no redis-server: run `make test`, which installs and starts one")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="mr-redis-")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir, "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)
    shutil.rmtree(workdir, ignore_errors=True)


def store_env(backend: str, redis_url: str, data_dir: Path) -> dict[str, str]:
    """The environment that points a process at a fresh, private store."""
    if backend == "redis":
        return {"REDIS_URL": redis_url, "MODEL_ROUTER_REDIS_NAMESPACE": f"t-{secrets.token_hex(6)}"}
    return {"MODEL_ROUTER_DATA_DIR": str(data_dir)}


def lease_free(server: Server, name: str) -> bool:
    """Whether no worker holds the store's lease `name` (taken and given back to see)."""

    async def take() -> bool:
        store = open_store(Settings.from_env(server.env))
        try:
            taken = await store.hold_lease(name, "test", 100)
            await store.release_lease(name, "test")
            return taken
        finally:
            await store.close()

    return asyncio.run(take())


class Server:
    """A `model-router serve` process on a free loopback port."""

    def __init__(self, env: dict[str, str], workdir: Path):
        self.port = free_port()
        self.admin_key = "test-admin-" + secrets.token_hex(16)
        self.workdir = workdir
        self.log_path = workdir / f"server-{self.port}.log"
        self.env = {
            **os.environ,
            "PORT": str(self.port),
            "HOST": "127.0.0.1",
            "MODEL_ROUTER_ADMIN_KEY": self.admin_key,
            "MODEL_ROUTER_WORKERS": "1",
            "LOG_LEVEL": "warning",
            "RATE_LIMIT_MAX": "100000000",  # tests that mean to hit it set their own
            **env,
        }
        self.env.pop("MODEL_ROUTER_TEST_REDIS_URL", None)
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=self.url, headers=self.auth(self.admin_key), timeout=10)

    @staticmethod
    def auth(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def start(self) -> Server:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(ROUTER), "serve"], env=self.env, stdout=log, stderr=log, start_new_session=True
        )
        # Ready once every worker has answered: a worker still starting when
        # the test ends misses Granian's stop and holds the shutdown until the
        # kill (15 s a test).
        workers = int(self.env["MODEL_ROUTER_WORKERS"])
        answered: set[int] = set()
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log_path.read_text()}")
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=1).status_code == 200:
                    fresh = {"Connection": "close"}  # a new connection may reach another worker
                    health = httpx.get(f"{self.url}/health/detailed", headers=fresh, timeout=1)
                    answered.add(health.json()["workerPid"])
                    if len(answered) >= workers:
                        return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server did not become ready:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None

    def wait_for_config(self, timeout: float = 10.0) -> None:
        """Until every worker runs the stored config version (writes go live
        within the poll interval; fresh connections reach every worker, as
        the kernel spreads them by their addresses)."""
        want = self.client.get("/api/config/export").json()["configVersion"]
        workers = int(self.env["MODEL_ROUTER_WORKERS"])
        current: set[int] = set()
        deadline = time.time() + timeout
        while len(current) < workers:
            assert time.time() < deadline, "config did not reach every worker"
            health = httpx.get(
                f"{self.url}/health/detailed", headers={"Connection": "close"}
            ).json()
            if health["components"]["config"]["version"] >= want:
                current.add(health["workerPid"])
            else:
                time.sleep(0.02)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        self.client.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def raw_exchange(port: int, data: bytes, timeout: float = 5) -> bytes:
    """Everything a server on loopback sends back for the raw bytes `data`,
    until it closes the connection (or goes quiet for `timeout`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        received = b""
        try:
            while chunk := s.recv(65536):
                received += chunk
        except TimeoutError:
            pass
        return received


# Who serves the port: Granian itself, or the core's front door in front of
# it (docs/data-plane.md). Tests of the edge run on both:
# `@pytest.mark.parametrize("edge", EDGES)`.
EDGES = ["granian", "door"]


@pytest.fixture
def edge() -> str | None:
    """None: as the environment says (MODEL_ROUTER_DOOR)."""
    return None


@pytest.fixture
def make_server(redis_url: str, tmp_path: Path, backend: str, edge: str | None) -> Iterator:
    """Start servers, each on a private store of the test's backend."""
    servers: list[Server] = []

    def make(workers: int = 1, **env: str) -> Server:
        data_dir = tmp_path / f"data-{len(servers)}"
        env = {**store_env(backend, redis_url, data_dir), **env}
        if edge is not None:
            env.setdefault("MODEL_ROUTER_DOOR", "on" if edge == "door" else "off")
        env["MODEL_ROUTER_WORKERS"] = str(workers)
        server = Server(env, tmp_path)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def server(make_server) -> Server:
    return make_server()


# --- bodies from the spec ----------------------------------------------------


def model_body(model_id: str, **overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "name": f"Model {model_id}",
        "version": model_id,
        "provider": "openai",
        "modelType": "chat",
        "capabilities": [{"type": "text-generation", "maxTokens": 4096}],
        "parameters": {"temperature": 0.7, "maxTokens": 4096},
        "status": "active",
        "tags": ["gpt-4", "high-quality"],
    }
    body.update(overrides)
    return body


def rule_body(*model_ids: str, **overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "name": "Creative Agent Claude Preference",
        "condition": {
            "agentType": ["creative"],
            "requestType": ["completion", "chat"],
            "contentLength": {"min": 100, "max": 2000},
        },
        "targetModels": [
            {"modelId": m, "weight": 0.5, "fallbackOrder": i + 1} for i, m in enumerate(model_ids)
        ],
        "priority": 100,
        "enabled": True,
    }
    if len(model_ids) > 1:  # a split needs a primary and a canary side
        body["trafficSplit"] = {"primary": 80, "canary": 20}
    body.update(overrides)
    return body


# --- certificates ---------------------------------------------------------


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _issue(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple | None, server: bool = False
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    signer_name, signer_key = issuer or (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(signer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))  # a session's fixture
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if server:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(signer_key, hashes.SHA256())


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as files."""
    out = tmp_path_factory.mktemp("pki")
    files: dict[str, Path] = {}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("test CA", ca_key, None)
    for name, server in (("server", True), ("client", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(name, key, (ca.subject, ca_key), server=server)
        files[f"{name}.crt"] = out / f"{name}.crt"
        files[f"{name}.crt"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{name}.key"] = out / f"{name}.key"
        files[f"{name}.key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,  # Granian reads PKCS#8 only
                serialization.NoEncryption(),
            )
        )
    files["ca.crt"] = out / "ca.crt"
    files["ca.crt"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return files


class MockProvider:
    """A `model-router mock-provider` process on a free loopback port; with
    `pki` (the fixture's files), over https with its server certificate."""

    def __init__(
        self, flavor: str, workdir: Path, pki: dict[str, Path] | None = None, **flags: object
    ):
        self.flavor = flavor
        self.port = free_port()
        self.url = f"{'https' if pki else 'http'}://127.0.0.1:{self.port}"
        self.verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=pki["ca.crt"]) if pki else True
        )
        if pki:
            flags |= {"tls_cert": pki["server.crt"], "tls_key": pki["server.key"]}
        args = [str(ROUTER), "mock-provider", "--port", str(self.port), "--flavor", flavor]
        for name, value in flags.items():
            args += [f"--{name.replace('_', '-')}", str(value)]
        self.args = args
        self.log_path = workdir / f"mock-{flavor}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def operation_url(self) -> str:
        """The full operation URL an endpoint of this flavor registers."""
        return {
            "openai": f"{self.url}/v1/chat/completions",
            "anthropic": f"{self.url}/v1/messages",
            "azure": f"{self.url}/openai/deployments/gpt-4o/chat/completions"
            "?api-version=2024-06-01",
        }[self.flavor]

    def start(self) -> MockProvider:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=log, start_new_session=True)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                httpx.get(f"{self.url}/__mock/stats", timeout=1, verify=self.verify)
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError(f"mock did not start: {self.log_path.read_text()}")

    def behave(self, **changes: object) -> None:
        httpx.post(
            f"{self.url}/__mock/behavior", json=changes, timeout=5, verify=self.verify
        ).raise_for_status()

    def requests(self) -> int:
        return httpx.get(f"{self.url}/__mock/stats", timeout=5, verify=self.verify).json()[
            "requests"
        ]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def make_mock(tmp_path: Path) -> Iterator:
    mocks: list[MockProvider] = []

    def make(
        flavor: str = "openai", pki: dict[str, Path] | None = None, **flags: object
    ) -> MockProvider:
        mock = MockProvider(flavor, tmp_path, pki, **flags)
        mocks.append(mock)
        return mock.start()

    yield make
    for mock in mocks:
        mock.stop()
