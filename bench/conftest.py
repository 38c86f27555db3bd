"""Benchmarks print their figures; `make bench` runs them all and `make
bench-gate` compares them with the committed baseline (bench/baseline/).

A new benchmark is one test function that calls the `benchmark` fixture; the
gate picks it up once the baseline is saved again (`make bench-baseline`).

Two things wrap every benchmarked call here, not in the router's code:

- Machine speed. On a shared 2-core machine the same code runs up to ~1.8x
  slower for seconds to minutes at a time (the other tenants' load). So a
  fixed reference slice is timed between the benchmark's rounds (pedantic
  mode, in the untimed setup), and the gate scales the baseline by how fast
  the reference ran then and now: it compares the code, not the neighbours.
- BENCH_SLOWDOWN=N runs each benchmarked call N times: an injected N-fold
  regression, to show that the gate catches one.
"""

from __future__ import annotations

import itertools
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

SLOWDOWN = int(os.environ.get("BENCH_SLOWDOWN", "1"))
TIME_FIELDS = ("min", "max", "mean", "median", "stddev", "iqr", "q1", "q3", "ld15iqr", "hd15iqr")
SECONDS = 0.3  # of timed calls per benchmark
REFERENCE_SHARE = 0.5  # reference time per benchmarked time


def reference_ns() -> float:
    """A fixed slice (~40 us) of interpreter, allocator and C calls."""
    start = time.perf_counter_ns()
    table = {str(i): (i, i * 7 % 13) for i in range(100)}
    sorted(table, key=lambda k: table[k][1])
    return time.perf_counter_ns() - start


class Calibrated(BenchmarkFixture):
    """pytest-benchmark's fixture, with the reference timed between its rounds:
    the machine's speed at the very moments the benchmark ran."""

    def __call__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if SLOWDOWN > 1:
            fn = _repeated(fn, SLOWDOWN)
        once = min(_time_ns(fn, args, kwargs) for _ in range(5))
        rounds = int(min(max(SECONDS * 1e9 / once, 20), 200_000))
        every = max(1, int(reference_ns() / (once * REFERENCE_SHARE)))
        counter = itertools.count()
        reference: list[float] = []

        def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
            if next(counter) % every == 0:
                reference.append(reference_ns())
            return args, kwargs

        result = self.pedantic(
            fn, setup=setup, rounds=rounds, warmup_rounds=min(rounds // 10, 1000)
        )
        self.extra_info["reference_ns"] = statistics.median(reference)
        return result


def _time_ns(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    start = time.perf_counter_ns()
    fn(*args, **kwargs)
    return max(time.perf_counter_ns() - start, 1)


def _repeated(fn: Callable[..., Any], times: int) -> Callable[..., Any]:
    def repeated(*args: Any, **kwargs: Any) -> Any:
        for _ in range(times - 1):
            fn(*args, **kwargs)
        return fn(*args, **kwargs)

    return repeated


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "gate_on_min: the gate compares this benchmark's minimum, not its median "
        "(its median swings with the neighbours' memory traffic, which the reference misses)",
    )


@pytest.fixture
def benchmark(benchmark: BenchmarkFixture) -> BenchmarkFixture:
    # pytest-benchmark insists on its own class: this one only adds a method.
    benchmark.__class__ = Calibrated
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
