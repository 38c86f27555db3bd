"""The soak: many requests through the router (2 workers) in front of two mock
providers, the primary killed halfway, with each worker's memory sampled.

    make soak                      # 300,000 requests
    .venv/bin/python bench/soak.py --requests 30000

Figures, each with its target: every request answered 200 (the primary's
death is failed over), and each worker's RSS flat within 10% from the end of
the first tenth (warm) to the end. Exits non-zero when one is missed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from load import Figure, at_most, wrk, wrk_script
from stack import Mock, Router, ensure_tool, rss_mib

SEGMENTS = 10
CONNECTIONS = 32


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300_000)
    parser.add_argument("--rate", type=int, default=3_000, help="assumed req/s, to size segments")
    args = parser.parse_args()
    ensure_tool("wrk", "wrk")
    seconds = max(1, round(args.requests / args.rate / SEGMENTS))
    with tempfile.TemporaryDirectory(prefix="mr-soak-") as tmp:
        work = Path(tmp)
        primary, backup = Mock(work), Mock(work)
        router = Router(work)
        try:
            router.add_model("bench", primary.url, backup.url)  # the model wrk's body names
            router.wait_for_config()
            script = wrk_script(work / "post.lua", router.admin_key)
            url = f"{router.url}/v1/chat/completions"
            pids = router.worker_pids()
            rss: list[list[float]] = []
            done = errors = 0.0
            segment = 0
            # Segments until the requests are served (the rate is a guess).
            while done < args.requests and segment < 3 * SEGMENTS:
                if segment == SEGMENTS // 2:
                    primary.stop()  # the fallback takes over
                run = wrk(url, script, seconds, CONNECTIONS, 1)
                done += run["rps"] * seconds
                errors += run["errors"]
                rss.append([rss_mib(pid) for pid in pids])
                memory = ", ".join(f"{m:.1f}" for m in rss[-1])
                print(
                    f"segment {segment + 1:>2}: {run['rps']:>8.0f} req/s, "
                    f"{run['errors']:.0f} non-2xx, RSS {memory} MiB",
                    flush=True,
                )
                segment += 1
            growth = max(
                (last - warm) / warm * 100 for warm, last in zip(rss[0], rss[-1], strict=True)
            )
            figures: list[Figure] = [
                at_most("non-2xx (primary killed halfway)", errors, 0, "", f"of {done:.0f}"),
                at_most("worker RSS growth after warm-up", growth, 10, "%"),
            ]
        finally:
            router.close()
            backup.stop()
            primary.stop()
    print()
    for figure in figures:
        print(figure.line())
    return 0 if all(f.met for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
