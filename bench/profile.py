"""Where a routed request's time goes: py-spy samples each of the router's two
workers while wrk keeps them busy, and the samples are folded into the stages
of the request path.

    .venv/bin/python bench/profile.py [--seconds 15] [--rate 200] [--raw out.txt]

Only samples that hold the GIL count (py-spy --gil): the worker's one
interpreter is what the request path queues for. Each sample is charged to the
stage of its innermost frame that names one (see STAGES), so time in C or Rust
called from Python counts for the Python frame that called it; Granian's Rust
threads show up only while they hold the GIL, with no Python frame.
Microseconds per request are the stage's GIL time, both workers together, over
the requests wrk got answered (with `--connections 1` one worker serves them all).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from load import wrk, wrk_script  # noqa: E402
from stack import BIN, Mock, Router  # noqa: E402

# (stage, substrings of a frame "function (file:line)"): the first stage that
# matches a frame, from the innermost frame outwards, takes the sample.
STAGES = [
    (
        "log line (format, PII mask, write)",
        ("logging/__init__.py", "telemetry/logging.py", "pii.py"),
    ),
    ("metrics (Prometheus)", ("prometheus_client", "telemetry/metrics.py")),
    ("record (Rust) and accounting", ("_record (", "_account (", "_usage (", "observe (")),
    ("decide (Rust)", ("decide (",)),
    ("upstream write and read", ("upstream.py",)),
    ("body decode, validation, the call", ("_chat_call", "msgspec", "_decode")),
    ("auth and rate limit", ("auth.py", "ratelimit.py", "_principal", "authorize")),
    ("response: headers, encoding", ("_router_headers", "json_response", "error_response")),
    ("Granian hand-over (RSGI entry, body read)", ("__rsgi__", "read_body")),
    ("request handler (routing, the rest)", ("calls.py", "executor.py", "app.py", "http.py")),
    ("store writes (background thread)", ("concurrent/futures/thread.py", "model_router/store/")),
    ("event loop, Granian's callbacks (C, Rust)", ("_spawn_rsgi_worker", "granian/_futures.py")),
]


def stage_of(stack: str) -> str:
    for frame in reversed(stack.split(";")):
        for stage, marks in STAGES:
            if any(mark in frame for mark in marks):
                return stage
    return "Granian's threads (no Python frame)" if not stack else "other"


def fold(raw: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            counts[stage_of(stack)] += int(n)
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--raw", type=Path, help="keep py-spy's raw samples here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mr-profile-") as tmp:
        work = Path(tmp)
        mock = Mock(work)
        router = Router(work, 2)
        try:
            router.add_model("bench", mock.url)
            router.wait_for_config()
            url, script = (
                f"{router.url}/v1/chat/completions",
                wrk_script(work / "r.lua", router.admin_key),
            )
            threads = min(2, args.connections)
            wrk(url, script, 2, args.connections, threads)  # warm up
            raws = {pid: work / f"raw-{pid}.txt" for pid in router.worker_pids()}
            spies = [
                subprocess.Popen(
                    [str(BIN / "py-spy"), "record", "-p", str(pid), "-r", str(args.rate)]
                    + ["-d", str(args.seconds), "-f", "raw", "-o", str(out)]
                    + ["--gil", "--nonblocking"],
                    stdout=subprocess.DEVNULL,
                )
                for pid, out in raws.items()
            ]
            load = wrk(url, script, args.seconds + 1, args.connections, threads)
            for spy in spies:
                spy.wait(60)
            raw = "".join(out.read_text() for out in raws.values() if out.exists())
            if args.raw:
                args.raw.write_text(raw)
            counts = fold(raw)
        finally:
            router.close()
            mock.stop()
    samples = sum(counts.values())
    served = load["rps"] * args.seconds
    print(f"\nwrk c={args.connections}: {load['rps']:.0f} req/s with the profiler attached")
    held = 100 * samples / (args.rate * args.seconds * len(raws))
    print(f"the workers' threads held their GIL {held:.0f}% of the time (average of the workers)")
    print(f"{'stage':<44}{'share of samples':>18}{'us per request':>16}")
    for stage, n in counts.most_common():
        print(f"{stage:<44}{100 * n / samples:>17.1f}%{n / args.rate / served * 1e6:>16.1f}")
    print(f"{'all sampled Python':<44}{100.0:>17.1f}%{samples / args.rate / served * 1e6:>16.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
