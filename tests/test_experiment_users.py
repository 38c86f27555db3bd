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
import redis
from test_experiment_stats import ALPHA, experiment, finished
from test_rollup_store import BUSY

from conftest import store_env
from model_router.experiments import stats
from model_router.experiments.controller import judge_experiment
from model_router.experiments.routing import Rollouts
from model_router.experiments.tally import ArmTally, TallySync, read_arms
from model_router.settings import Settings
from model_router.store import StoreUnavailable, open_store


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


def accumulating_users(
    rng: np.random.Generator, runs: int, count: int, reads: int, sigma: float
) -> stats.UnitSummary:
    """One arm's user-level sums at each read, per run: users join at random
    reads and keep sending requests (Poisson, at a log-normal rate of their
    own: sigma 3 is API traffic where a few users send most requests), each
    with a success rate of their own (Beta(4, 1))."""
    rate = rng.lognormal(0.0, sigma, (runs, count))
    p = rng.beta(4.0, 1.0, (runs, count))
    joins = rng.integers(0, reads, (runs, count))
    active = np.arange(reads)[None, None, :] >= joins[:, :, None]
    n_step = rng.poisson(rate[:, :, None] * active)
    n = np.cumsum(n_step, axis=2).astype(float)
    y = np.cumsum(rng.binomial(n_step, p[:, :, None]), axis=2).astype(float)
    return stats.UnitSummary(
        (n > 0).sum(1), n.sum(1), y.sum(1), (n * n).sum(1), (y * y).sum(1), (n * y).sum(1)
    )


@pytest.mark.parametrize(
    ("sigma", "count", "reads", "runs", "live"),
    [(1.5, 1500, 40, 500, 0.6), (3.0, 300, 100, 500, 0.0)],
)
def test_a_a_with_a_few_heavy_users_keeps_false_positives_under_alpha(
    sigma: float, count: int, reads: int, runs: int, live: float
) -> None:
    """A/A runs read while users' requests arrive, with log-normal volumes.
    A test resting on the raw number of users erred in 12.7% of the sigma-3
    runs (25% read once at the end): there the effective users, (Σn)²/Σn²,
    are about 4 of 300, and the tests now wait for 100 of them — which never
    come (a handful of users carry the traffic). At sigma 1.5 with 1,500 users
    they come in 71% of the runs (`live`, median 131): no always-valid
    p-value crossed alpha, the fixed-horizon one read once at the end did in
    3.8% of the runs."""
    rng = np.random.default_rng(1111)
    ever, once, effective = [], [], []
    for _ in range(runs // 50):
        a, b = (accumulating_users(rng, 50, count, reads, sigma) for _ in range(2))
        c = stats.delta_method(a, b, ALPHA, 0.05)
        ever.append(np.min(c.always_valid_p_value, axis=1) <= ALPHA)
        once.append(np.asarray(c.p_value)[:, -1] <= ALPHA)
        effective.append(np.minimum(a.effective_units, b.effective_units)[:, -1])
    assert np.concatenate(ever).mean() <= ALPHA + 0.01
    assert np.concatenate(once).mean() <= ALPHA + 0.01
    assert (np.concatenate(effective) >= stats.MIN_SEQUENTIAL_N).mean() >= live


def test_no_difference_waits_until_the_test_can_speak() -> None:
    """A 45-point difference, 60 users (or 80 requests) an arm, a large
    minDetectableEffect: the always-valid test answers 1 below 100 samples,
    so "no difference" must wait for them (it was called at 16 users). An
    effect too small to find in 10^12 samples needs none (it said 3e25)."""
    rng = np.random.default_rng(1113)
    e = experiment(assignment="user", min_samples_per_variant=10, min_detectable_effect=0.3)
    judged = judge_experiment(
        e, {"0": control_tally(rng, 60, 0.5), "1": control_tally(rng, 60, 0.95)}
    )
    assert judged.decision == "running"
    assert judged.results.samples_needed_per_variant == stats.MIN_SEQUENTIAL_N
    tiny = experiment(primary_metric="latency", min_detectable_effect=1e-9)
    slow = ArmTally(requests=500, successes=500, latency=stats.Summary(500, 1e5, 3e7))
    assert judge_experiment(tiny, {"0": slow, "1": slow}).results.samples_needed_per_variant is None
    by_request = experiment(min_samples_per_variant=10, min_detectable_effect=0.3)
    arms = {"0": ArmTally(requests=80, successes=40), "1": ArmTally(requests=80, successes=76)}
    assert judge_experiment(by_request, arms).decision == "running"


def test_per_user_analysis_agrees_with_the_textbook_on_one_request_per_user() -> None:
    """A user of one request is a Bernoulli sample: the delta method's
    variance is then p(1-p)/(K-1), the z-test's unpooled one up to K/(K-1)."""
    k, ok = 1000, 800
    one = stats.UnitSummary(k, k, ok, k, ok, ok)
    assert one.ratio == 0.8
    assert one.variance == pytest.approx(0.8 * 0.2 / (k - 1))


def control_tally(rng: np.random.Generator, count: int, rate: float) -> ArmTally:
    """An arm of `count` users as the store gives it back: their totals."""
    r, s = users(rng, 1, count, rate)
    by_user = {f"{i:x}": Counter(r=int(r[0, i]), s=int(s[0, i])) for i in range(count)}
    return ArmTally(requests=int(r.sum()), successes=int(s.sum()), by_user=by_user)


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
    the ones computed from each user's own totals, exactly."""
    e = experiment(
        assignment="user",
        primary_metric="latency",
        guardrail_metrics=["cost"],
        window_start_ms=int(time.time() * 1000),  # the store keeps 90 days of windows
    )
    rollouts = Rollouts([], [e])
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
            arm = rollouts.arm(None, "a", None, None, f"r{i}", user)
            assert arm is not None
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
        assert arm.requests == sum(u["r"] for u in totals)
        s, lat = (np.array([u[f] for u in totals], dtype=object) for f in ("s", "L"))
        exact = stats.UnitSummary(
            len(totals),
            s.sum(),
            lat.sum() * 1e-3,
            s @ s,
            (lat @ lat) * 1e-3 * 1e-3,
            (s @ lat) * 1e-3,
        )
        assert arm.per_user("latency") == exact
        cost = arm.per_user("cost")
        assert cost.nn == sum(u["r"] ** 2 for u in totals)
        assert cost.yy == pytest.approx(sum(u["C"] ** 2 for u in totals) * 1e-18, rel=1e-12)


def test_a_flush_cut_off_by_a_redis_stall_counts_once(backend, redis_url, tmp_path):
    """Redis busy past the store's timeout while a worker flushes: the flush
    fails, Redis then runs the merge it had queued, and the worker's retry of
    the same batch adds nothing more: one user, two requests (before, the
    client sent it again by itself, and the worker once more)."""
    if backend != "redis":
        pytest.skip("a stall of the server is Redis's")
    e = experiment(assignment="user", window_start_ms=int(time.time() * 1000))
    arm = Rollouts([], [e]).arm(None, "a", None, None, "r1", "alice")
    assert arm is not None

    async def scenario() -> ArmTally:
        store = open_store(Settings.from_env(store_env(backend, redis_url, tmp_path)))
        worker = TallySync(store)
        for i in range(2):
            worker.record(arm, finished(f"r{i}", arm.model_id, True, 100.0, 0.001, "alice"))
        busy = asyncio.create_task(
            asyncio.to_thread(redis.Redis.from_url(redis_url).eval, BUSY, 0, 1.5)
        )
        await asyncio.sleep(0.1)
        with pytest.raises(StoreUnavailable):
            await worker.flush()
        await busy
        await worker.flush()
        arms = await read_arms(store, e.id, e.window_start_ms)
        await store.close()
        return arms[arm.variant]

    tally = asyncio.run(scenario())
    assert (tally.requests, tally.users, tally.per_user("successRate").nn) == (2, 1, 4)
