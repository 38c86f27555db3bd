"""The service against its targets, side by side in one run on loopback: the
mock provider called directly, nginx as a plain reverse proxy in front of it,
the router (2 workers, LOG_LEVEL=info, the full path) in front of it, and the
design's floor (`bench/forwarder.py`: Granian and the router's upstream client,
nothing else), printed for reference: what the router adds beyond it is its
own per-request work.

    .venv/bin/python bench/load.py [--seconds 5] [--rounds 3] [--only latency,streaming] \\
        [--env MODEL_ROUTER_DOOR=off]

Phases (all by default; --only picks some):
  throughput  wrk -c64 POST /v1/chat/completions; routed req/s >= 70% of nginx's
  latency     wrk -c1; added p50 <= 0.25 ms and p99 <= 1 ms (router minus mock)
  streaming   a timestamping client against a stamped upstream; added time to
              first token <= 0.5 ms, per-chunk delivery p99 <= upstream's + 0.1 ms
  memory      RSS of each router worker <= 45 MiB, and flat: after the run it
              is at most 10% above what it was after the warm-up
  startup     from `model-router serve` to the first 200 of /health/ready <= 1.5 s

Rounds alternate the targets so that the machine's noise falls on all of
them alike; each figure is the median over rounds. Prints each figure with its
target and exits 1 when one is missed. Everything stops by itself.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).parent))

import streaming  # noqa: E402
from stack import (  # noqa: E402
    Forwarder,
    Mock,
    Nginx,
    Process,
    Router,
    ensure_tool,
    free_port,
    rss_mib,
)

PHASES = ("throughput", "latency", "streaming", "memory", "startup")
BODY = {
    "model": "bench",
    "messages": [{"role": "user", "content": "Write a tagline for a coffee shop"}],
}
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"
{auth}
"""


def wrk_script(path: Path, key: str | None = None, get: bool = False) -> Path:
    """A wrk script posting BODY (or, with `get`, a plain GET), with the
    router's key when given."""
    auth = f'wrk.headers["Authorization"] = "Bearer {key}"' if key else ""
    path.write_text(auth if get else WRK_SCRIPT.format(body=json.dumps(BODY), auth=auth))
    return path


def wrk(url: str, script: Path, seconds: int, connections: int, threads: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
        + ["-s", str(script), url],
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
        "errors": float(errors.group(1)) if errors else 0.0,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": millis("50%"),
        "p99": millis("99%"),
    }


class Figure:
    def __init__(self, name: str, value: float, unit: str, target: str, met: bool):
        self.name, self.value, self.unit, self.target, self.met = name, value, unit, target, met

    def line(self) -> str:
        verdict = "ok" if self.met else "MISSED"
        return f"{self.name:<44}{self.value:>10.3f} {self.unit:<6}{self.target:<34}{verdict}"


def at_most(name: str, value: float, limit: float, unit: str, what: str = "") -> Figure:
    return Figure(name, value, unit, f"<= {limit:g} {unit} {what}".rstrip(), value <= limit)


def at_least(name: str, value: float, limit: float, unit: str) -> Figure:
    return Figure(name, value, unit, f">= {limit:g} {unit}", value >= limit)


Rounds = list[dict[str, dict[str, float]]]
P = TypeVar("P", bound=Process)


def median_of(rounds: Rounds, target: str, key: str) -> float:
    return statistics.median(r[target][key] for r in rounds)


def print_wrk_rounds(rounds: Rounds, digits: int) -> None:
    print(f"{'target':<10}{'req/s':>16}{'p50 ms':>10}{'p99 ms':>10}   (medians)")
    for name in rounds[0]:
        print(
            f"{name:<10}{median_of(rounds, name, 'rps'):>16.0f}"
            f"{median_of(rounds, name, 'p50'):>10.{digits}f}"
            f"{median_of(rounds, name, 'p99'):>10.{digits}f}"
        )


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path):
        self.args = args
        self.started: list[Process] = []  # stopped by close(), newest first
        try:
            self._start(work)
        except BaseException:
            self.close()
            raise

    def _start(self, work: Path) -> None:
        args = self.args
        self.mock = self._started(Mock(work))
        self.nginx = self._started(Nginx(work, self.mock.port, args.workers))
        self.floor = self._started(Forwarder(work, self.mock.url, args.workers))
        self.stamped = self._started(
            Process(
                [sys.executable, str(Path(__file__).parent / "stamped_upstream.py")]
                + ["--port", str(port := free_port()), "--gap-ms", str(args.chunk_gap_ms)],
                work / "stamped.log",
            )
        )
        self.stamped_url = f"http://127.0.0.1:{port}/v1/chat/completions"
        self.stamped_floor = self._started(Forwarder(work, self.stamped_url, args.workers))
        self.router = self._started(Router(work, args.workers, **dict(args.env)))
        self.router.add_model("bench", self.mock.url)
        self.router.add_model("stamped", self.stamped_url)
        self.router.wait_for_config()
        self.plain = wrk_script(work / "plain.lua")
        self.routed = wrk_script(work / "routed.lua", self.router.admin_key)
        self.targets = {
            "mock": (f"http://127.0.0.1:{self.mock.port}/v1/chat/completions", self.plain),
            "nginx": (f"http://127.0.0.1:{self.nginx.port}/v1/chat/completions", self.plain),
            "floor": (self.floor.url, self.plain),
            "router": (f"{self.router.url}/v1/chat/completions", self.routed),
        }

    def _started(self, process: P) -> P:
        self.started.append(process)
        return process

    def close(self) -> None:
        for process in reversed(self.started):
            process.stop()

    def rounds(self, connections: int, threads: int) -> Rounds:
        a = self.args
        return [
            {
                name: wrk(url, script, a.seconds, connections, threads)
                for name, (url, script) in self.targets.items()
            }
            for _ in range(a.rounds)
        ]

    def warm_up(self) -> None:
        for name in ("router", "floor"):
            url, script = self.targets[name]
            wrk(url, script, 2, self.args.connections, self.args.threads)

    def rss(self) -> list[float]:
        return [rss_mib(pid) for pid in self.router.worker_pids()]

    def throughput(self) -> list[Figure]:
        a = self.args
        rounds = self.rounds(a.connections, a.threads)
        print(f"\nwrk -t{a.threads} -c{a.connections} -d{a.seconds}s, {a.rounds} rounds")
        print_wrk_rounds(rounds, 2)

        def share(target: str) -> float:
            return statistics.median(r[target]["rps"] / r["nginx"]["rps"] for r in rounds)

        ratio = share("router")
        floor_errors = sum(r["floor"]["errors"] for r in rounds)
        print(
            f"floor (bench/forwarder.py) does {100 * share('floor'):.1f}% of nginx's req/s"
            f" (median of the rounds' ratios; {floor_errors:.0f} non-2xx)"
        )
        errors = sum(r["router"]["errors"] for r in rounds)
        return [
            at_most("routed non-2xx responses", errors, 0, ""),
            at_least(f"routed req/s / nginx's (c={a.connections})", 100 * ratio, 70, "%"),
        ]

    def latency(self) -> list[Figure]:
        rounds = self.rounds(1, 1)
        print(f"\nwrk -t1 -c1 -d{self.args.seconds}s, {self.args.rounds} rounds")
        print_wrk_rounds(rounds, 3)

        def added(target: str, key: str) -> float:
            return statistics.median(r[target][key] - r["mock"][key] for r in rounds)

        for name in ("nginx", "floor"):
            print(f"{name} adds p50 {added(name, 'p50'):.3f} ms, p99 {added(name, 'p99'):.3f} ms")
        return [
            at_most("added latency p50 (c=1)", added("router", "p50"), 0.25, "ms"),
            at_most("added latency p99 (c=1)", added("router", "p99"), 1.0, "ms"),
        ]

    def streaming(self) -> list[Figure]:
        n = self.args.stream_requests
        auth = {"Authorization": f"Bearer {self.router.admin_key}"}
        routed_url = f"{self.router.url}/v1/chat/completions"
        streaming.measure(routed_url, auth, 20, "stamped")  # warm up
        streaming.measure(self.stamped_floor.url, {}, 20, "stamped")
        rounds = [
            {
                "upstream": streaming.measure(self.stamped_url, {}, n, "stamped"),
                "floor": streaming.measure(self.stamped_floor.url, {}, n, "stamped"),
                "router": streaming.measure(routed_url, auth, n, "stamped"),
            }
            for _ in range(self.args.rounds)
        ]
        print(f"\nstreams at c=1: {n} per target and round, {self.args.rounds} rounds (medians)")
        print(f"{'target':<10}{'TTFT p50 ms':>14}{'chunk p50 ms':>14}{'chunk p99 ms':>14}")
        for name in ("upstream", "floor", "router"):
            print(
                f"{name:<10}{median_of(rounds, name, 'ttft_p50'):>14.3f}"
                f"{median_of(rounds, name, 'chunk_p50'):>14.3f}"
                f"{median_of(rounds, name, 'chunk_p99'):>14.3f}"
            )

        def added(key: str, target: str = "router") -> float:
            return statistics.median(r[target][key] - r["upstream"][key] for r in rounds)

        print(
            f"floor adds TTFT p50 {added('ttft_p50', 'floor'):.3f} ms, "
            f"chunk p99 {added('chunk_p99', 'floor'):.3f} ms"
        )
        # Each stream's first chunk comes with the response's head: apart, what the rest cost.
        print(f"after each stream's first chunk, router adds p99 {added('later_chunk_p99'):.3f} ms")
        return [
            at_most("added time to first token p50 (c=1)", added("ttft_p50"), 0.5, "ms"),
            at_most("added per-chunk delivery p99 (c=1)", added("chunk_p99"), 0.1, "ms", "over"),
        ]

    def memory(self, before: list[float], load: Callable[[], None] | None) -> list[Figure]:
        if load:
            load()
        after = self.rss()
        print(f"\nRSS per worker, MiB: after warm-up {before}, after the run {after}")
        growth = max(100 * (b - a) / a for a, b in zip(before, after, strict=True))
        return [
            at_most("RSS per worker, largest", max(after), 45, "MiB"),
            at_most("RSS growth over the run, largest", growth, 10, "%"),
        ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=5, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--stream-requests", type=int, default=100)
    parser.add_argument("--chunk-gap-ms", type=float, default=2.0)
    parser.add_argument("--only", default=",".join(PHASES), help="comma-separated phases")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        type=lambda pair: tuple(pair.split("=", 1)),
        metavar="NAME=VALUE",
        help="set in the router's environment (MODEL_ROUTER_DOOR=off: without the door)",
    )
    args = parser.parse_args()
    only = args.only.split(",")
    if unknown := set(only) - set(PHASES):
        parser.error(f"unknown phases {sorted(unknown)}; choose from {PHASES}")
    ensure_tool("wrk", "wrk")

    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="mr-bench-") as work:
        bench = Bench(args, Path(work))
        try:
            if "startup" in only:
                figures.append(
                    at_most("ready to serve after start", bench.router.ready_s, 1.5, "s")
                )
            bench.warm_up()
            before = bench.rss()
            for phase in ("throughput", "latency", "streaming"):
                if phase in only:
                    figures += getattr(bench, phase)()
            if "memory" in only:
                loaded = {"throughput", "latency", "streaming"} & set(only)
                figures += bench.memory(before, None if loaded else bench.throughput)
        finally:
            bench.close()

    print(
        f"\nrouter: {args.workers} workers, LOG_LEVEL=info; mock provider and nginx "
        f"({args.workers} workers) on the same machine; POST /v1/chat/completions"
    )
    print(f"{'figure':<44}{'measured':>10} {'unit':<6}{'target':<34}verdict")
    for figure in figures:
        print(figure.line())
    missed = [f.name for f in figures if not f.met]
    print(f"\n{len(figures) - len(missed)} targets met, {len(missed)} missed")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
