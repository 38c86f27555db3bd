"""Benchmarks print their figures; `make bench` runs them all and `make
bench-gate` compares them with the committed baseline (bench/baseline/).

A new benchmark is one test function that calls the `benchmark` fixture; the
gate picks it up once the baseline is saved again (`make bench-baseline`).

Two things wrap every benchmarked call here, not in the router's code:

- Machine speed. On a shared 2-core machine the same code runs up to ~1.8x
  slower for minutes at a time (the other tenants' load), on every benchmark
  alike. So each benchmark is bracketed by a fixed reference workload, timed
  just before and just after it, and the gate scales the baseline by how fast
  the reference ran then and now: it compares the code, not the neighbours.
- BENCH_SLOWDOWN=N runs each benchmarked call N times: an injected N-fold
  regression, to show that the gate catches one.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

SLOWDOWN = int(os.environ.get("BENCH_SLOWDOWN", "1"))
TIME_FIELDS = ("min", "max", "mean", "median", "stddev", "iqr", "q1", "q3", "ld15iqr", "hd15iqr")


def _reference_work() -> list[str]:
    """Interpreter, allocator and C calls: what the benchmarks lean on too."""
    table = {str(i): (i, i * 7 % 13) for i in range(2000)}
    return sorted(table, key=lambda k: table[k][1])


def reference_ns() -> float:
    samples = []
    for _ in range(15):
        start = time.perf_counter_ns()
        for _ in range(3):
            _reference_work()
        samples.append((time.perf_counter_ns() - start) / 3)
    return statistics.median(samples)


class Bracketed(BenchmarkFixture):
    """pytest-benchmark's fixture, with the reference timed around the run."""

    def __call__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if SLOWDOWN > 1:
            fn = _repeated(fn, SLOWDOWN)
        before = reference_ns()
        result = super().__call__(fn, *args, **kwargs)
        after = reference_ns()
        self.extra_info["reference_ns"] = math.sqrt(before * after)
        return result


def _repeated(fn: Callable[..., Any], times: int) -> Callable[..., Any]:
    def repeated(*args: Any, **kwargs: Any) -> Any:
        for _ in range(times - 1):
            fn(*args, **kwargs)
        return fn(*args, **kwargs)

    return repeated


@pytest.fixture
def benchmark(benchmark: BenchmarkFixture) -> BenchmarkFixture:
    # pytest-benchmark insists on its own class: this one only adds a method.
    benchmark.__class__ = Bracketed
    return benchmark


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> Any:
    """Before pytest-benchmark compares (its own sessionfinish wrapper, inside
    this one): scale each baseline benchmark to the machine's speed now."""
    bench_session = getattr(session.config, "_benchmarksession", None)
    if bench_session is not None and bench_session.compared_mapping:
        _scale_baselines(bench_session)
    yield


def _scale_baselines(bench_session: Any) -> None:
    now = {b.fullname: b.extra_info.get("reference_ns") for b in bench_session.benchmarks if b}
    for baseline in bench_session.compared_mapping.values():
        for fullname, saved in baseline.items():
            then = saved.get("extra_info", {}).get("reference_ns")
            if not (then and now.get(fullname)):
                continue
            factor = now[fullname] / then
            stats = saved["stats"]
            for field in TIME_FIELDS:
                stats[field] *= factor
            stats["ops"] /= factor
            print(f"\n{fullname}: baseline scaled x{factor:.2f} to the machine's speed now")
