"""The performance gates fail when the router gets slower: each runs here, for
real and briefly, with a slowdown injected from outside the router's code."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).parent.parent


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    # Without pytest-xdist's variables: pytest-benchmark turns itself off in a
    # run that looks like an xdist worker, and the gate would measure nothing.
    own = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST_")}
    return subprocess.run(
        args, cwd=ROOT, env={**own, **env}, capture_output=True, text=True, timeout=300
    )


def test_the_benchmark_gate_fails_on_a_2x_slower_engine():
    gate = run("make", "-s", "bench-gate", BENCH_SLOWDOWN="2")
    assert gate.returncode != 0, gate.stdout
    assert "Performance has regressed" in gate.stdout + gate.stderr


def test_the_sla_run_fails_when_the_router_adds_300_ms():
    sla = run(
        str(ROOT / ".venv/bin/python"), "bench/sla.py", "--seconds", "6", "--users", "10",
        "--slow-router-ms", "300",
    )  # fmt: skip
    assert sla.returncode == 1, sla.stdout + sla.stderr
    assert "SLA  BREACHED: overhead P50" in sla.stdout
