"""The SLA run: locust (bench/locustfile.py), headless, for a bounded time.

    .venv/bin/python bench/sla.py [--seconds 25] [--users 40]
    .venv/bin/python bench/sla.py --host https://router.example --key KEY

Locally it starts the router (2 workers) and four mock providers, each with
1% errors: two with realistic latency (200 ms +- 100 ms) and two with 20 ms.
Two models on each pair, the second the first's fallback, so failures fail
over. Two phases, one locust run each:
  realistic  the router's own added time (X-Model-Router-Overhead-Ms) within
             the SLA (P50 < 100 ms, P95 < 500 ms, P99 < 1 s), < 0.1% failed
  20 ms      the same, and end to end within the SLA too
With --host, one phase against that router: its added time and failures
(add --check overhead,e2e to assert end to end as well).

--slow-router-ms N makes the local router N ms slower per request without
touching its code (bench/slowdown/sitecustomize.py), to show a breach fails.
Exits 1 when a phase breaches the SLA.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from stack import BIN, Mock, Router  # noqa: E402

HERE = Path(__file__).parent
PHASES = {  # agent type: mock latency and jitter (ms), what to assert
    "sla-realistic": (200, 100, "overhead"),
    "sla-20ms": (20, 0, "overhead,e2e"),
}


def locust(host: str, key: str, agent: str, checks: str, args: argparse.Namespace) -> int:
    print(f"\n== {agent}: {args.users} users, {args.seconds} s against {host}", flush=True)
    return subprocess.run(
        [str(BIN / "locust"), "-f", str(HERE / "locustfile.py"), "--headless"]
        + ["-u", str(args.users), "-r", str(args.users), "-t", f"{args.seconds}s"]
        + ["--host", host, "--only-summary", "--exit-code-on-error", "0", "--stop-timeout", "5"],
        env={**os.environ, "SLA_KEY": key, "SLA_AGENT": agent, "SLA_CHECK": checks},
        timeout=args.seconds + 60,
    ).returncode


def local(args: argparse.Namespace, work: Path) -> int:
    env = {}
    if args.slow_router_ms:
        env = {
            "PYTHONPATH": str(HERE / "slowdown"),
            "BENCH_ROUTER_DELAY_MS": str(args.slow_router_ms),
        }
    router = Router(work, 2, **env)
    mocks: list[Mock] = []
    try:
        for agent, (latency, jitter, _) in PHASES.items():
            pair = []
            for n in (1, 2):
                mocks.append(Mock(work, latency_ms=latency, jitter_ms=jitter, error_rate=0.01))
                router.add_model(f"{agent}-{n}", mocks[-1].url)
                pair.append(f"{agent}-{n}")
            router.prefer(agent, *pair)
        router.wait_for_config()
        codes = [
            locust(router.url, router.admin_key, agent, checks, args)
            for agent, (_, _, checks) in PHASES.items()
        ]
    finally:
        router.close()
        for mock in mocks:
            mock.stop()
    return max(codes)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=25, help="per phase")
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--host", help="a deployed router: no local start")
    parser.add_argument("--key", default=os.environ.get("SLA_KEY", ""))
    parser.add_argument("--agent", default="sla-agent", help="with --host")
    parser.add_argument("--check", default="overhead", help="with --host")
    parser.add_argument("--slow-router-ms", type=float, default=0.0)
    args = parser.parse_args()
    if args.host:
        if not args.key:
            parser.error("--host needs --key or SLA_KEY (an admin key of that router)")
        code = locust(args.host, args.key, args.agent, args.check, args)
    else:
        with tempfile.TemporaryDirectory(prefix="mr-sla-") as work:
            code = local(args, Path(work))
    print("\nSLA " + ("met" if code == 0 else "BREACHED"))
    return 1 if code else 0


if __name__ == "__main__":
    sys.exit(main())
