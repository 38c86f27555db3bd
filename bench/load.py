"""Load test: the router (2 workers) in front of the mock provider, against
the mock called directly, side by side in one run, with wrk.

    .venv/bin/python bench/load.py [--seconds 10] [--connections 64]

Prints requests/s and p50/p99 for both at the given concurrency, and the
latency the router adds at concurrency 1 (router minus mock, p50 and p99).
Everything runs on loopback and stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
BODY = {
    "model": "auto",
    "messages": [{"role": "user", "content": "Write a tagline for a coffee shop"}],
}
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"
{auth}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, seconds: float = 30) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    return subprocess.Popen(args, env=env, stdout=out, stderr=out, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def wrk(url: str, script: Path, seconds: int, connections: int, threads: int) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout

    def millis(label: str) -> float:
        value, unit = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": millis("50%"),
        "p99": millis("99%"),
        "errors": float(errors.group(1)) if errors else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is missing: apt-get install -y wrk", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="mr-bench-"))
    mock_port, router_port = free_port(), free_port()
    admin = "bench-admin-" + secrets.token_hex(8)
    env = {
        **os.environ,
        "PORT": str(router_port),
        "HOST": "127.0.0.1",
        "MODEL_ROUTER_DATA_DIR": str(work),
        "MODEL_ROUTER_ADMIN_KEY": admin,
        "MODEL_ROUTER_WORKERS": str(args.workers),
        "LOG_LEVEL": args.log_level,
        "RATE_LIMIT_MAX": "1000000000",
        "MOCK_KEY": "mock-secret",
    }
    env.pop("REDIS_URL", None)
    mock = start(
        [str(BIN / "model-router"), "mock-provider", "--port", str(mock_port)],
        env,
        work / "mock.log",
    )
    router = start([str(BIN / "model-router"), "serve"], env, work / "router.log")
    try:
        wait_up(f"http://127.0.0.1:{mock_port}/__mock/stats")
        wait_up(f"http://127.0.0.1:{router_port}/health")
        admin_client = httpx.Client(
            base_url=f"http://127.0.0.1:{router_port}", headers={"Authorization": f"Bearer {admin}"}
        )
        admin_client.post(
            "/api/models",
            json={
                "name": "Bench",
                "version": "bench-model",
                "provider": "openai",
                "modelType": "chat",
                "pricing": {"inputPer1k": 0.001, "outputPer1k": 0.002},
            },
        ).raise_for_status()
        admin_client.post(
            "/api/models/bench-model/endpoints",
            json={
                "url": f"http://127.0.0.1:{mock_port}/v1/chat/completions",
                "apiKeyEnv": "MOCK_KEY",
            },
        ).raise_for_status()
        time.sleep(1.0)  # every worker picks the config up
        check = admin_client.post("/v1/chat/completions", json=BODY)
        assert check.status_code == 200, check.text

        body = json.dumps(BODY)
        direct = work / "direct.lua"
        direct.write_text(WRK_SCRIPT.format(body=body, auth=""))
        routed = work / "routed.lua"
        routed.write_text(
            WRK_SCRIPT.format(body=body, auth=f'wrk.headers["Authorization"] = "Bearer {admin}"')
        )
        mock_url = f"http://127.0.0.1:{mock_port}/v1/chat/completions"
        router_url = f"http://127.0.0.1:{router_port}/v1/chat/completions"

        wrk(router_url, routed, 2, args.connections, args.threads)  # warm up
        results = {
            "mock, direct": wrk(mock_url, direct, args.seconds, args.connections, args.threads),
            "router -> mock": wrk(router_url, routed, args.seconds, args.connections, args.threads),
        }
        single = {
            "mock": wrk(mock_url, direct, args.seconds, 1, 1),
            "router": wrk(router_url, routed, args.seconds, 1, 1),
        }
    finally:
        stop(router)
        stop(mock)
    print(
        f"\nwrk -t{args.threads} -c{args.connections} -d{args.seconds}s, "
        f"router with {args.workers} workers, LOG_LEVEL={args.log_level}, "
        "POST /v1/chat/completions"
    )
    print(f"{'target':<16}{'requests/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'non-2xx':>10}")
    for name, r in results.items():
        print(f"{name:<16}{r['rps']:>12.0f}{r['p50']:>10.2f}{r['p99']:>10.2f}{r['errors']:>10.0f}")
    print(f"\nconcurrency 1 (wrk -t1 -c1 -d{args.seconds}s)")
    print(f"{'target':<16}{'requests/s':>12}{'p50 ms':>10}{'p99 ms':>10}")
    for name, r in single.items():
        print(f"{name:<16}{r['rps']:>12.0f}{r['p50']:>10.3f}{r['p99']:>10.3f}")
    added_p50 = single["router"]["p50"] - single["mock"]["p50"]
    added_p99 = single["router"]["p99"] - single["mock"]["p99"]
    print(f"added by the router: p50 {added_p50:.3f} ms, p99 {added_p99:.3f} ms")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
