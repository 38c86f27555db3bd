"""Streaming through two versions of the router side by side in one run: the
stamped upstream called directly, and router A and router B in front of it
(`model-router serve`, each with its own PYTHONPATH), rounds alternating
which router goes first.

    .venv/bin/python bench/stream_ab.py --a /work/main/router_py --b router_py \\
        [--door openai|anthropic] [--rounds 5] [--requests 60] [--workers 1]

`--door openai` streams /v1/chat/completions: the same format in and out,
passed through. `--door anthropic` streams /v1/messages from the same OpenAI
upstream: every chunk translated. Prints, per target, the medians over rounds
of the time to first token, the per-chunk delivery p50 and p99 (see
`streaming.py`) and the router workers' CPU time per stream (all their
threads, from /proc/<pid>/task/*/schedstat: less at the mercy of the
neighbours than the latencies); then what each router adds to the upstream,
and B minus A.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import streaming  # noqa: E402
from stack import Process, Router, free_port  # noqa: E402

FIGURES = ("ttft_p50", "chunk_p50", "chunk_p99", "cpu_us")


def cpu_ns(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except OSError:  # a thread that ended meanwhile
                pass
    return total


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--a", required=True, help="PYTHONPATH of router A")
    parser.add_argument("--b", required=True, help="PYTHONPATH of router B")
    parser.add_argument("--door", default="openai", choices=sorted(streaming.FRONT_DOORS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=60, help="streams per target and round")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mr-stream-ab-") as tmp:
        work = Path(tmp)
        port = free_port()
        upstream = Process(
            [sys.executable, str(Path(__file__).parent / "stamped_upstream.py")]
            + ["--port", str(port)],
            work / "stamped.log",
        )
        upstream_url = f"http://127.0.0.1:{port}/v1/chat/completions"
        routers: dict[str, Router] = {}
        try:
            for name, path in (("A", args.a), ("B", args.b)):
                (work / name).mkdir()
                routers[name] = Router(work / name, args.workers, PYTHONPATH=str(Path(path)))
                routers[name].add_model("stamped", upstream_url)
                routers[name].wait_for_config()
            door_path = streaming.FRONT_DOORS[args.door][0]

            def measure(name: str, requests: int) -> dict[str, float]:
                if name == "upstream":
                    figures = streaming.measure(upstream_url, {}, requests, "stamped")
                    return {**figures, "cpu_us": 0.0}
                router = routers[name]
                pids = router.worker_pids()
                auth = {"Authorization": f"Bearer {router.admin_key}"}
                before = cpu_ns(pids)
                figures = streaming.measure(
                    router.url + door_path, auth, requests, "stamped", args.door
                )
                return {**figures, "cpu_us": (cpu_ns(pids) - before) / requests / 1000}

            for name in routers:
                measure(name, 20)  # warm up
            rounds = []
            for i in range(args.rounds):
                order = ("upstream", "A", "B") if i % 2 == 0 else ("upstream", "B", "A")
                rounds.append({name: measure(name, args.requests) for name in order})
        finally:
            for router in routers.values():
                router.close()
            upstream.stop()

    print(
        f"door {args.door}, {args.rounds} rounds x {args.requests} streams per target, "
        f"{args.workers} worker(s); medians over rounds (ms; cpu: us per stream)"
    )
    print(f"{'':<12}" + "".join(f"{f:>12}" for f in FIGURES))

    def line(label: str, values: list[dict[str, float]]) -> None:
        medians = (statistics.median(v[f] for v in values) for f in FIGURES)
        print(f"{label:<12}" + "".join(f"{m:>12.3f}" for m in medians))

    def minus(a: str, b: str) -> list[dict[str, float]]:
        return [{f: r[a][f] - r[b][f] for f in FIGURES} for r in rounds]

    for name in ("upstream", "A", "B"):
        line(name, [r[name] for r in rounds])
    line("A adds", minus("A", "upstream"))
    line("B adds", minus("B", "upstream"))
    line("B - A", minus("B", "A"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
