"""Plain (non-streaming) requests through two versions of the router side by
side in one run: router A and router B (`model-router serve`, each with its
own PYTHONPATH) in front of one mock provider, rounds alternating which
router goes first.

    .venv/bin/python bench/plain_ab.py --a /work/main/router_py --b router_py \\
        [--rounds 7] [--seconds 5] [--connections 64] [--workers 2] \\
        [--env-a MODEL_ROUTER_DOOR=off] [--path /health/live] [--https]

`--env-a`, `--env-b` (repeatable) set the environment of one router: one
checkout with two settings is compared the same way (the door is on by
default: `--env-a MODEL_ROUTER_DOOR=off` compares the app's path with it). `--path` GETs that
path instead (with the admin key) to measure a request that is not routed.
`--https`: the mock provider serves https:// with a certificate made for the
run, which both routers trust (SSL_CERT_FILE).

Each round runs `wrk -t2 -c<connections>` POST /v1/chat/completions against
each router in turn. Prints, per router, the medians over rounds of req/s,
wrk's p50 and p99 and the router workers' CPU time per request (all their threads,
from /proc/<pid>/task/*/schedstat: less at the mercy of the neighbours than
the rates); then B minus A (the median of the per-round differences) and
B / A for the rate.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from load import wrk, wrk_script  # noqa: E402
from stack import Mock, Router, self_signed  # noqa: E402
from stream_ab import cpu_ns  # noqa: E402

FIGURES = ("rps", "p50", "p99", "cpu_us")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--a", required=True, help="PYTHONPATH of router A")
    parser.add_argument("--b", required=True, help="PYTHONPATH of router B")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--env-a", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--env-b", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--path", help="GET this path instead of routed calls")
    parser.add_argument("--https", action="store_true", help="the provider over https://")
    args = parser.parse_args()
    envs = {
        "A": dict(pair.split("=", 1) for pair in args.env_a),
        "B": dict(pair.split("=", 1) for pair in args.env_b),
    }

    with tempfile.TemporaryDirectory(prefix="mr-plain-ab-") as tmp:
        work = Path(tmp)
        cert = self_signed(work) if args.https else None
        if cert:
            for env in envs.values():
                env["SSL_CERT_FILE"] = str(cert)
        mock = Mock(work, cert)
        routers: dict[str, Router] = {}
        try:
            for name, path in (("A", args.a), ("B", args.b)):
                (work / name).mkdir()
                routers[name] = Router(
                    work / name, args.workers, PYTHONPATH=str(Path(path)), **envs[name]
                )
                routers[name].add_model("bench", mock.url)
                routers[name].wait_for_config()

            def measure(name: str, seconds: int) -> dict[str, float]:
                router = routers[name]
                script = wrk_script(work / f"{name}.lua", router.admin_key, get=bool(args.path))
                pids = router.worker_pids()
                before = cpu_ns(pids)
                url = f"{router.url}{args.path or '/v1/chat/completions'}"
                load = wrk(url, script, seconds, args.connections, min(2, args.connections))
                served = load["rps"] * seconds
                return {**load, "cpu_us": (cpu_ns(pids) - before) / served / 1000}

            for name in routers:
                measure(name, 2)  # warm up
            rounds = []
            for i in range(args.rounds):
                order = ("A", "B") if i % 2 == 0 else ("B", "A")
                rounds.append({name: measure(name, args.seconds) for name in order})
        finally:
            for router in routers.values():
                router.close()
            mock.stop()

    errors = {name: sum(r[name]["errors"] for r in rounds) for name in ("A", "B")}
    print(
        f"{args.rounds} rounds x {args.seconds} s, wrk c={args.connections}, "
        f"{args.workers} worker(s) each; medians over rounds "
        f"(p50, p99 in ms, cpu: router workers' us per request); non-2xx {errors}"
    )
    print(f"{'':<8}" + "".join(f"{f:>12}" for f in FIGURES))
    for name in ("A", "B"):
        medians = (statistics.median(r[name][f] for r in rounds) for f in FIGURES)
        print(f"{name:<8}" + "".join(f"{m:>12.3f}" for m in medians))
    diffs = (statistics.median(r["B"][f] - r["A"][f] for r in rounds) for f in FIGURES)
    print(f"{'B - A':<8}" + "".join(f"{d:>12.3f}" for d in diffs))
    ratio = statistics.median(r["B"]["rps"] / r["A"]["rps"] for r in rounds)
    print(f"B / A req/s: {ratio:.3f} (median of the per-round ratios)")
    for i, r in enumerate(rounds):
        cells = "  ".join(f"{n} {r[n]['rps']:.0f} req/s {r[n]['cpu_us']:.0f} us" for n in r)
        print(f"  round {i + 1}: {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
