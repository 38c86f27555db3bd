"""Experiments that randomise users (`assignment: "user"`), analysed per user
with the delta method: simulations of the statistics (seeded, the functions
the server runs), and the per-user sums kept exact through a real store by
two workers' flushes interleaved (SQLite and Redis)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import numpy as np
import pytest
from test_experiment_stats import ALPHA, experiment, finished

from conftest import store_env
from model_router.experiments import stats
from model_router.experiments.controller import judge_experiment
from model_router.experiments.routing import Rollouts
from model_router.experiments.tally import ArmTally, TallySync, read_arms
from model_router.settings import Settings
from model_router.store import open_store


def users(rng: np.random.Generator, runs: int, count: int, rate_mean: float) -> tuple:
    """Each run's users: a heavy-tailed number of requests (1-199) and a
    success rate of their own (Beta, mean `rate_mean`): requests, successes."""
    requests = rng.integers(1, 200, (runs, count))
    concentration = 5.0
    a, b = rate_mean * concentration, (1 - rate_mean) * concentration
    successes = rng.binomial(requests, rng.beta(a, b, (runs, count)))
    return requests, successes


def arm_sums(requests: np.ndarray, successes: np.ndarray, at: np.ndarray) -> stats.UnitSummary:
    """The arm's user-level sums after its first `at` users, per run."""

    def upto(x: np.ndarray) -> np.ndarray:
        return np.cumsum(x, axis=1)[:, at - 1]

    r, s = requests.astype(float), successes.astype(float)
    return stats.UnitSummary(at, upto(r), upto(s), upto(r * r), upto(s * s), upto(r * s))


def per_user_peeking(rates: tuple[float, float], count: int, runs: int, seed: int) -> np.ndarray:
    """Whether each run's always-valid p-value ever fell to alpha, read after
    every 20 users an arm."""
    rng = np.random.default_rng(seed)
    at = np.arange(stats.MIN_SEQUENTIAL_N, count + 1, 20)
    a, b = (arm_sums(*users(rng, runs, count, rate), at) for rate in rates)
    c = stats.delta_method(a, b, ALPHA, 0.05)
    return np.min(c.always_valid_p_value, axis=1) <= ALPHA


def test_a_a_with_sticky_users_read_continuously_keeps_false_positives_under_alpha() -> None:
    """1,000 A/A experiments, 2,000 users an arm with 1-199 requests and a
    success rate each: per user, the false positives stay under alpha + 1%
    however often read; per request, the same data read once errs in most runs."""
    rejected = per_user_peeking((0.8, 0.8), 2000, runs=1000, seed=31)
    assert rejected.mean() <= ALPHA + 0.01
    rng = np.random.default_rng(32)
    (r_a, s_a), (r_b, s_b) = users(rng, 400, 500, 0.8), users(rng, 400, 500, 0.8)
    per_request = stats.two_proportions(r_a.sum(1), s_a.sum(1), r_b.sum(1), s_b.sum(1), ALPHA, 0.05)
    assert (per_request.always_valid_p_value <= ALPHA).mean() > 0.3


def test_users_whose_requests_keep_arriving_while_read_keep_false_positives_under_alpha() -> None:
    """Users' requests arrive in random order across users, and the results
    are read 15 times as they do: each read sees users part-way through
    their requests. 1.3% of these 300 A/A runs cross alpha = 5% (1.1% of
    1,000 runs read 25 times)."""
    rng = np.random.default_rng(7)
    runs, count, reads = 300, 600, 15
    crossed = 0
    for _ in range(runs):
        arms = []
        for _ in range(2):
            requests, rates = rng.integers(1, 60, count), rng.beta(4, 1, count)
            owner = rng.permutation(np.repeat(np.arange(count), requests))
            arms.append((owner, rng.random(owner.size) < rates[owner]))
        for m in np.linspace(0, min(a[0].size for a in arms), reads + 1)[1:].astype(int):
            sums = []
            for owner, ok in arms:
                r = np.bincount(owner[:m], minlength=count).astype(float)
                s = np.bincount(owner[:m], weights=ok[:m], minlength=count)
                r, s = r[r > 0], s[r > 0]
                sums.append(stats.UnitSummary(r.size, r.sum(), s.sum(), r @ r, s @ s, r @ s))
            if stats.delta_method(*sums, ALPHA, 0.05).always_valid_p_value <= ALPHA:
                crossed += 1
                break
    assert crossed / runs <= ALPHA + 0.01


def test_per_user_analysis_agrees_with_the_textbook_on_one_request_per_user() -> None:
    """A user of one request is a Bernoulli sample: the delta method's
    variance is then p(1-p)/(K-1), the z-test's unpooled one up to K/(K-1)."""
    k, ok = 1000, 800
    one = stats.UnitSummary(k, k, ok, k, ok, ok)
    assert one.ratio == 0.8
    assert one.variance == pytest.approx(0.8 * 0.2 / (k - 1))


def control_tally(rng: np.random.Generator, count: int, rate: float) -> ArmTally:
    r, s = users(rng, 1, count, rate)
    sums = arm_sums(r, s, np.array([count]))
    n, y, nn, yy, ny = (int(x.item()) for x in (sums.n, sums.y, sums.nn, sums.yy, sums.ny))
    cells = Counter({"u": count, "urr": nn, "uss": yy, "urs": ny})
    return ArmTally(requests=n, successes=y, units=cells)


def test_a_five_point_difference_between_users_is_found_at_the_users_it_says_it_needs() -> None:
    """The sample size of a user experiment is in users, from the control's
    per-user variance: a true 5-point difference in users' success rates is
    found by then in at least 80% of runs read continuously."""
    e = experiment(assignment="user")
    control = control_tally(np.random.default_rng(33), 3000, 0.5)
    needed = judge_experiment(e, {"0": control, "1": control}).results.samples_needed_per_variant
    assert needed is not None and 500 < needed < 20_000
    detected = per_user_peeking((0.5, 0.45), needed, runs=1000, seed=34)
    assert detected.mean() >= 0.80


def test_a_user_experiment_is_decided_on_users_and_checked_against_its_weights() -> None:
    rng = np.random.default_rng(35)
    e = experiment(assignment="user")
    good, bad = control_tally(rng, 400, 0.8), control_tally(rng, 400, 0.6)
    judged = judge_experiment(e, {"0": bad, "1": good})
    assert judged.decision == "winner: m-b"
    assert judged.results.test == "delta-method z-test (per user)"
    assert [v.users for v in judged.results.variants] == [400, 400]
    assert judged.results.srm.mismatch is False
    lopsided = control_tally(rng, 300, 0.8)
    skewed = judge_experiment(e, {"0": lopsided, "1": control_tally(rng, 400, 0.8)})
    assert skewed.results.srm.mismatch is True
    few = judge_experiment(e, {"0": control_tally(rng, 50, 0.6), "1": control_tally(rng, 50, 0.9)})
    assert few.decision == "running"  # under 100 users an arm: no always-valid verdict


def test_two_workers_per_user_sums_are_exact_through_the_store(backend, redis_url, tmp_path):
    """300 users' 1-20 requests each, recorded by two workers in random order
    and flushed at random moments: the arm's user-level sums read back equal
    the ones computed from each user's own totals, to each square's rounding
    unit (latency squared in ms², cost in (10 µUSD)²)."""
    e = experiment(
        assignment="user",
        primary_metric="latency",
        guardrail_metrics=["cost"],
        window_start_ms=int(time.time() * 1000),  # the store keeps 90 days of windows
    )
    rollouts = Rollouts([], [e])
    compiled = rollouts.scopes[1]["a"]
    rng = np.random.default_rng(36)
    requests = []
    for u in range(300):
        for _ in range(int(rng.integers(1, 21))):
            ok = bool(rng.random() < 0.9)
            requests.append((f"user-{u}", ok, float(rng.lognormal(5, 0.5)), float(rng.random())))
    order = rng.permutation(len(requests))
    truth: dict[str, dict[str, Counter[str]]] = {}

    async def scenario() -> dict[str, ArmTally]:
        store = open_store(Settings.from_env(store_env(backend, redis_url, tmp_path)))
        workers = [TallySync(store), TallySync(store)]
        for step, i in enumerate(order):
            user, ok, ms, cost = requests[i]
            arm = compiled.arm(f"r{i}", user)  # type: ignore[call-arg]
            workers[step % 2].record(arm, finished(f"r{i}", arm.model_id, ok, ms, cost, user))
            mine = truth.setdefault(arm.variant, {}).setdefault(user, Counter())
            us = round(ms * 1000) if ok else 0
            mine.update(r=1, s=int(ok), L=us, C=round(cost * 1e9))
            if rng.random() < 0.05:
                await workers[int(rng.integers(0, 2))].flush()
        for w in workers:
            await w.flush()
        arms = await read_arms(store, e.id, e.window_start_ms)
        await store.close()
        return arms

    arms = asyncio.run(scenario())
    assert set(arms) == set(truth) == {"0", "1"}
    for variant, by_user in truth.items():
        arm = arms[variant]
        totals = list(by_user.values())
        assert arm.users == len(totals)
        latency, cost = arm.per_user("latency"), arm.per_user("cost")
        assert latency.nn == sum(u["s"] ** 2 for u in totals)
        assert latency.yy == pytest.approx(sum(round(u["L"] ** 2 / 1e6) for u in totals))
        assert latency.ny == pytest.approx(sum(round(u["s"] * u["L"] / 1e3) for u in totals))
        assert cost.nn == sum(u["r"] ** 2 for u in totals)
        expected = sum(round(u["C"] ** 2 / 1e8) for u in totals) * 1e-10
        assert cost.yy == pytest.approx(expected, rel=1e-12)
        assert arm.requests == sum(u["r"] for u in totals)
        # What the analysis reads: the variance from the raw totals, but for
        # the rounding of each user's square and product (7e-5 here).
        s = np.array([u["s"] for u in totals], float)
        lat = np.array([u["L"] for u in totals], float) / 1e3
        exact = stats.UnitSummary(
            len(totals), s.sum(), lat.sum(), (s * s).sum(), (lat * lat).sum(), (s * lat).sum()
        )
        assert latency.variance == pytest.approx(exact.variance, rel=1e-3)
