"""The processes a benchmark runs against, on loopback: the mock provider, the
router (`model-router serve`) and nginx as a plain reverse proxy. Each starts in
its own session so that stopping it stops its workers too."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
from forwarder import HEALTH as FLOOR_HEALTH

BIN = Path(sys.executable).parent
MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_tool(binary: str, package: str) -> None:
    """Debian's package when the tool is missing (the machines run as root)."""
    if shutil.which(binary) is None:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True)


def wait_up(
    url: str, seconds: float = 30, status: int | None = None, verify: ssl.SSLContext | bool = True
) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url, timeout=1, verify=verify)
            if status is None or r.status_code == status:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"{url} did not come up")


class Process:
    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None):
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                args, env=env, stdout=out, stderr=out, start_new_session=True
            )

    def wait_up(
        self, url: str, status: int | None = None, verify: ssl.SSLContext | bool = True
    ) -> None:
        """Until `url` answers (with this status); a process that never does
        is stopped, its workers with it, before the error goes up."""
        try:
            wait_up(url, status=status, verify=verify)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(pid) for pid in path.read_text().split()]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / MIB
    return 0.0


def self_signed(work: Path) -> Path:
    """A certificate for 127.0.0.1 that is its own authority (trusted by
    naming it in SSL_CERT_FILE), beside its key (`<cert>.key`)."""
    cert = work / "upstream.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
        + ["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext"]
        + ["subjectAltName=IP:127.0.0.1", "-keyout", f"{cert}.key", "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert


class Mock(Process):
    """`model-router mock-provider`, OpenAI's format; flags as on its command
    line; with `cert` (`self_signed`), over https."""

    def __init__(self, work: Path, cert: Path | None = None, **flags: object):
        self.port = free_port()
        origin = f"{'https' if cert else 'http'}://127.0.0.1:{self.port}"
        self.url = f"{origin}/v1/chat/completions"
        if cert:
            flags |= {"tls_cert": cert, "tls_key": f"{cert}.key"}
        args = [str(BIN / "model-router"), "mock-provider", "--port", str(self.port)]
        for name, value in flags.items():
            args += [f"--{name.replace('_', '-')}", str(value)]
        super().__init__(args, work / f"mock-{self.port}.log")
        self.wait_up(
            f"{origin}/__mock/stats",
            verify=ssl.create_default_context(cafile=cert) if cert else True,
        )


class Router(Process):
    """`model-router serve` on a fresh SQLite store; `ready_s` is the time from
    the spawn to the first 200 from /health/ready."""

    def __init__(self, work: Path, workers: int = 2, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_key = "bench-admin-" + secrets.token_hex(8)
        self.workers = workers
        data = work / f"router-{self.port}"
        data.mkdir()
        environ = {
            **os.environ,
            "PORT": str(self.port),
            "HOST": "127.0.0.1",
            "MODEL_ROUTER_DATA_DIR": str(data),
            "MODEL_ROUTER_ADMIN_KEY": self.admin_key,
            "MODEL_ROUTER_WORKERS": str(workers),
            "LOG_LEVEL": "info",
            "RATE_LIMIT_MAX": "1000000000",
            "MOCK_KEY": "mock-secret",
            **env,
        }
        environ.pop("REDIS_URL", None)
        spawned = time.monotonic()
        super().__init__([str(BIN / "model-router"), "serve"], work / "router.log", environ)
        self.wait_up(f"{self.url}/health/ready", status=200)
        self.ready_s = time.monotonic() - spawned
        self.admin = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.admin_key}"}, timeout=10
        )

    def add_model(self, model_id: str, *endpoint_urls: str) -> None:
        """A chat model whose endpoints are these URLs, primary first."""
        self.admin.post(
            "/api/models",
            json={
                "name": model_id,
                "version": model_id,
                "provider": "openai",
                "modelType": "chat",
                "capabilities": [{"type": "text-generation"}],
                "pricing": {"inputPer1k": 0.001, "outputPer1k": 0.002},
            },
        ).raise_for_status()
        for i, url in enumerate(endpoint_urls):
            self.admin.post(
                f"/api/models/{model_id}/endpoints",
                json={
                    "id": f"{model_id}-ep{i}",
                    "url": url,
                    "type": "primary" if i == 0 else "backup",
                    "apiKeyEnv": "MOCK_KEY",
                },
            ).raise_for_status()

    def prefer(self, agent: str, *model_ids: str) -> None:
        """The agent's models in order: the first serves, the next are its fallbacks."""
        self.admin.post(
            f"/api/agents/{agent}/preferences", json={"preferredModels": list(model_ids)}
        ).raise_for_status()

    def wait_for_config(self, seconds: float = 15) -> None:
        """Until every worker runs the stored config (fresh connections reach each)."""
        want = self.admin.get("/api/config/export").json()["configVersion"]
        current: set[int] = set()
        deadline = time.monotonic() + seconds
        while len(current) < self.workers:
            if time.monotonic() > deadline:
                raise RuntimeError("the config did not reach every worker")
            health = httpx.get(
                f"{self.url}/health/detailed", headers={"Connection": "close"}
            ).json()
            if health["components"]["config"]["version"] >= want:
                current.add(health["workerPid"])
            else:
                time.sleep(0.02)

    def worker_pids(self) -> list[int]:
        """Granian forks its workers from the serving process."""
        return self.children()

    def close(self) -> None:
        self.admin.close()
        self.stop()


NGINX_CONF = """worker_processes {workers}; daemon off; pid {work}/nginx.pid;
error_log {work}/nginx.err warn;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {work}/b; proxy_temp_path {work}/p;
  fastcgi_temp_path {work}/f; uwsgi_temp_path {work}/u; scgi_temp_path {work}/s;
  upstream mock {{ server 127.0.0.1:{upstream}; keepalive 128; }}
  server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://mock;
    proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
"""


class Forwarder(Process):
    """`bench/forwarder.py` under Granian: the router's upstream client and
    nothing else, the same workers as the router (the design's floor)."""

    def __init__(self, work: Path, upstream_url: str, workers: int = 2):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1/chat/completions"
        here = str(Path(__file__).parent)
        env = {
            **os.environ,
            "UPSTREAM_URL": upstream_url,
            "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])),
        }
        args = [str(BIN / "granian"), "--interface", "rsgi", "--host", "127.0.0.1"]
        args += ["--port", str(self.port), "--workers", str(workers), "--loop", "uvloop"]
        args += ["--no-ws", "--log-level", "warning", "forwarder:app"]
        super().__init__(args, work / f"forwarder-{self.port}.log", env)
        self.wait_up(f"http://127.0.0.1:{self.port}{FLOOR_HEALTH}", status=200)


class Nginx(Process):
    """Debian's nginx-light as a plain reverse proxy in front of one upstream port,
    kept-alive upstream connections, the same number of workers as the router."""

    def __init__(self, work: Path, upstream_port: int, workers: int = 2):
        ensure_tool("nginx", "nginx-light")
        self.port = free_port()
        root = work / f"nginx-{self.port}"
        root.mkdir()
        conf = root / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(workers=workers, work=root, upstream=upstream_port, port=self.port)
        )
        super().__init__(["nginx", "-c", str(conf), "-p", str(root)], root / "nginx.log")
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"nginx did not start: {conf}") from None
                time.sleep(0.02)
