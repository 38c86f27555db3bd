"""The statistics of experiments and canaries, from summary figures alone
(n, sum, sum of squares; successes): what the store's accumulators hold.

Fixed-horizon tests (valid when read once, at a planned sample size):
- success rates: the two-proportion z-test;
- latency, cost, feedback: Welch's t-test (unequal variances).

Always-valid inference (valid however often it is read): the mixture
sequential probability ratio test (mSPRT) with a normal mixture over the
difference of means, Johari, Koomen, Pekelis & Walsh, "Always Valid
Inference: Continuous Monitoring of A/B Tests", Operations Research 70(3),
2022 (arXiv:1512.04922). Its always-valid p-value 1/Λ is bounded by Ville's
inequality: the chance it EVER falls to alpha under the null is at most
alpha. The mixing variance tau² is the square of the minimum detectable
effect, on the metric's own scale.

Every function takes numpy arrays as well as scalars, so the simulations in
tests/test_experiment_stats.py run the same code over thousands of
experiments at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


def _scipy_stats() -> Any:
    """scipy.stats, imported when first needed: it was most of a worker's
    start-up (1.2 s of 1.6 s) and memory, and only the rollout controller and
    readers of results use it."""
    from scipy import stats

    return stats


class _Numpy:
    """numpy, imported on first use for the same reason: 21 MiB of every
    worker's resident memory that only the controller and readers need."""

    def __getattr__(self, name: str) -> Any:
        import numpy

        return getattr(numpy, name)


np: Any = _Numpy()


# An always-valid test needs a variance estimate worth the name before it is
# read: below this many samples per arm it answers p = 1.
MIN_SEQUENTIAL_N = 100
# The sample-ratio-mismatch check flags p below this (a deliberately strict
# line: with many reads, a looser one would cry wolf).
SRM_ALPHA = 0.001


@dataclass(frozen=True)
class Summary:
    """One arm's figures for one metric: count, sum and sum of squares."""

    n: int
    total: float
    squares: float

    @property
    def mean(self) -> float | None:
        return self.total / self.n if self.n else None

    @property
    def variance(self) -> float:
        """The sample variance (0 below two samples; never negative)."""
        if self.n < 2:
            return 0.0
        return max(0.0, (self.squares - self.total * self.total / self.n) / (self.n - 1))

    @classmethod
    def of_successes(cls, n: int, successes: int) -> Summary:
        """A success rate as a mean of 0/1 outcomes (squares = sum)."""
        return cls(n, successes, successes)


@dataclass(frozen=True)
class Comparison:
    """B against A: the difference of means (B - A), its confidence interval,
    the fixed-horizon p-value and the always-valid one (two-sided), and the
    always-valid interval (None below MIN_SEQUENTIAL_N per arm)."""

    test: str
    difference: float
    ci: tuple[float, float]
    p_value: float
    always_valid_p_value: float
    always_valid_ci: tuple[float, float] | None = None


def _as_float(x: Any) -> Any:
    return x if isinstance(x, np.ndarray) and x.ndim else float(x)


def msprt_p_value(theta: Any, variance: Any, tau2: float) -> Any:
    """The always-valid p-value min(1, 1/Λ) of H0: θ = 0, given an estimate
    θ̂ ~ N(θ, V) and the mixture θ ~ N(0, τ²) (Johari et al. 2022, eq. 11):
    Λ = sqrt(V / (V + τ²)) · exp(τ² θ̂² / (2 V (V + τ²)))."""
    theta = np.asarray(theta, dtype=float)
    v = np.maximum(np.asarray(variance, dtype=float), 1e-300)
    log_lr = 0.5 * np.log(v / (v + tau2)) + tau2 * theta * theta / (2 * v * (v + tau2))
    return _as_float(np.minimum(1.0, np.exp(-np.minimum(log_lr, 700.0))))


def msprt_interval(theta: float, variance: float, tau2: float, alpha: float) -> tuple[float, float]:
    """The always-valid 1 - alpha interval for θ: every θ₀ the mSPRT of
    H0: θ = θ₀ does not reject, θ̂ ± √(2V(V+τ²)/τ² · (ln(1/α) + ½ ln((V+τ²)/V)))."""
    v = max(variance, 1e-300)
    half = math.sqrt(
        2 * v * (v + tau2) / tau2 * (math.log(1 / alpha) + 0.5 * math.log((v + tau2) / v))
    )
    return theta - half, theta + half


def two_proportions(n_a: Any, s_a: Any, n_b: Any, s_b: Any, alpha: float, mde: float) -> Comparison:
    """Success rates: the two-proportion z-test (pooled variance under H0),
    a Wald interval for the difference, and the mSPRT on the same estimate."""
    n_a, s_a, n_b, s_b = (np.asarray(x, dtype=float) for x in (n_a, s_a, n_b, s_b))
    p_a = np.divide(s_a, n_a, out=np.zeros_like(s_a), where=n_a > 0)
    p_b = np.divide(s_b, n_b, out=np.zeros_like(s_b), where=n_b > 0)
    diff = p_b - p_a
    pooled = np.divide(s_a + s_b, n_a + n_b, out=np.zeros_like(s_a), where=(n_a + n_b) > 0)
    inv = np.divide(1.0, n_a, out=np.zeros_like(n_a), where=n_a > 0) + np.divide(
        1.0, n_b, out=np.zeros_like(n_b), where=n_b > 0
    )
    v0 = pooled * (1 - pooled) * inv
    z = np.divide(diff, np.sqrt(v0), out=np.zeros_like(diff), where=v0 > 0)
    p = 2 * _scipy_stats().norm.sf(np.abs(z))
    v1 = np.divide(p_a * (1 - p_a), n_a, out=np.zeros_like(p_a), where=n_a > 0) + np.divide(
        p_b * (1 - p_b), n_b, out=np.zeros_like(p_b), where=n_b > 0
    )
    half = _scipy_stats().norm.ppf(1 - alpha / 2) * np.sqrt(v1)
    avp = msprt_p_value(diff, v0, mde * mde)
    avp = np.where(np.minimum(n_a, n_b) >= MIN_SEQUENTIAL_N, avp, 1.0)
    return Comparison(
        "two-proportion z-test",
        _as_float(diff),
        (_as_float(diff - half), _as_float(diff + half)),
        _as_float(p),
        _as_float(avp),
    )


def welch(a: Summary, b: Summary, alpha: float, mde: float) -> Comparison:
    """Means (latency, cost, feedback): Welch's t-test and interval, and the
    mSPRT on the difference of means with its plug-in variance."""
    if a.n < 2 or b.n < 2:
        return Comparison("Welch's t-test", 0.0, (-math.inf, math.inf), 1.0, 1.0)
    diff = (b.mean or 0.0) - (a.mean or 0.0)
    va, vb = a.variance / a.n, b.variance / b.n
    v = va + vb
    if v <= 0:
        same = diff == 0
        return Comparison(
            "Welch's t-test", diff, (diff, diff), 1.0 if same else 0.0, 1.0 if same else 0.0
        )
    df = v * v / (va * va / (a.n - 1) + vb * vb / (b.n - 1))
    t = diff / math.sqrt(v)
    p = float(2 * _scipy_stats().t.sf(abs(t), df))
    half = float(_scipy_stats().t.ppf(1 - alpha / 2, df)) * math.sqrt(v)
    sequential = min(a.n, b.n) >= MIN_SEQUENTIAL_N
    avp = msprt_p_value(diff, v, mde * mde) if sequential else 1.0
    avci = msprt_interval(diff, v, mde * mde, alpha) if sequential else None
    return Comparison("Welch's t-test", diff, (diff - half, diff + half), p, float(avp), avci)


@dataclass(frozen=True)
class UnitSummary:
    """One arm's figures for a metric when units (users), not requests, were
    randomised: the metric is a ratio of per-unit sums, R = Σy / Σn (a user's
    successes over their requests, their latency total over their successes),
    and what varies independently is each unit's pair (n, y). Held as the
    number of units and Σn, Σy, Σn², Σy², Σny; scalars or numpy arrays."""

    units: Any
    n: Any
    y: Any
    nn: Any
    yy: Any
    ny: Any

    @property
    def ratio(self) -> Any:
        n = np.asarray(self.n, dtype=float)
        return _as_float(np.divide(self.y, n, out=np.zeros_like(n), where=n > 0))

    @property
    def variance(self) -> Any:
        """The delta method's variance of the ratio (Deng, Knoblich & Lu, "Applying
        the Delta Method in Metric Analytics", KDD 2018): with the residuals
        e = y - R·n of each unit, Var(R) ≈ K / (K - 1) · Σe² / (Σn)², where
        Σe² = Σy² - 2R·Σny + R²·Σn². 0 below two units; never negative."""
        k, n = np.broadcast_arrays(*(np.asarray(x, dtype=float) for x in (self.units, self.n)))
        r = np.asarray(self.ratio, dtype=float)
        residuals = np.asarray(self.yy) - 2 * r * np.asarray(self.ny) + r * r * np.asarray(self.nn)
        ok = (k >= 2) & (n > 0)
        scale = np.divide(k, (k - 1) * n * n, out=np.zeros_like(k), where=ok)
        return _as_float(np.maximum(residuals * scale, 0.0))

    @property
    def effective_units(self) -> Any:
        """Kish's effective number of units, (Σn)² / Σn²: the users a test
        really rests on. When a few users send most requests it is far below
        their number, and the normal approximation needs it large."""
        n, nn = np.asarray(self.n, dtype=float), np.asarray(self.nn, dtype=float)
        return _as_float(np.divide(n * n, nn, out=np.zeros_like(n), where=nn > 0))

    @property
    def unit_variance(self) -> float:
        """The variance one unit contributes (K · Var(R)): what sample sizes use."""
        return float(self.variance) * float(self.units)


def delta_method(a: UnitSummary, b: UnitSummary, alpha: float, mde: float) -> Comparison:
    """B's ratio against A's with units randomised: a z-test and interval on
    the difference with the delta method's variances, and the mSPRT on it.
    Both p-values answer 1 until each arm has MIN_SEQUENTIAL_N *effective*
    units: with a few heavy users the approximation is not yet worth it."""
    diff = np.asarray(b.ratio, dtype=float) - np.asarray(a.ratio, dtype=float)
    v = np.asarray(a.variance, dtype=float) + np.asarray(b.variance, dtype=float)
    z = np.divide(diff, np.sqrt(v), out=np.zeros_like(diff), where=v > 0)
    half = _scipy_stats().norm.ppf(1 - alpha / 2) * np.sqrt(v)
    effective = np.minimum(np.asarray(a.effective_units), np.asarray(b.effective_units))
    sequential = effective >= MIN_SEQUENTIAL_N
    # No variance at all (every user alike): any difference is certain.
    exact = np.where(diff == 0, 1.0, 0.0)
    p = np.where(sequential, np.where(v > 0, 2 * _scipy_stats().norm.sf(np.abs(z)), exact), 1.0)
    avp = np.where(sequential, msprt_p_value(diff, v, mde * mde), 1.0)
    scalar = not (isinstance(diff, np.ndarray) and diff.ndim)
    avci = (
        msprt_interval(float(diff), float(v), mde * mde, alpha)
        if scalar and bool(sequential) and float(v) > 0
        else None
    )
    return Comparison(
        "delta-method z-test (per user)",
        _as_float(diff),
        (_as_float(diff - half), _as_float(diff + half)),
        _as_float(p),
        _as_float(avp),
        avci,
    )


def ratio_interval(s: UnitSummary, alpha: float, proportion: bool) -> tuple[float, float] | None:
    """One arm's normal interval for its ratio with the delta method's variance."""
    if s.units < 2 or not s.n:
        return None
    half = float(_scipy_stats().norm.ppf(1 - alpha / 2)) * math.sqrt(s.variance)
    lo, hi = s.ratio - half, s.ratio + half
    return (max(0.0, lo), min(1.0, hi)) if proportion else (lo, hi)


def mean_interval(s: Summary, alpha: float, proportion: bool) -> tuple[float, float] | None:
    """One arm's confidence interval: Wilson's for a rate, Student's t for a mean."""
    if s.n == 0:
        return None
    mean = s.mean or 0.0
    if proportion:
        z = float(_scipy_stats().norm.ppf(1 - alpha / 2))
        denom = 1 + z * z / s.n
        centre = (mean + z * z / (2 * s.n)) / denom
        half = z * math.sqrt(mean * (1 - mean) / s.n + z * z / (4 * s.n * s.n)) / denom
        return (max(0.0, centre - half), min(1.0, centre + half))
    if s.n < 2:
        return None
    half = float(_scipy_stats().t.ppf(1 - alpha / 2, s.n - 1)) * math.sqrt(s.variance / s.n)
    return (mean - half, mean + half)


def sample_ratio_mismatch(counts: list[int], weights: list[float]) -> tuple[float, bool]:
    """Pearson's chi-square of the arms' counts against the configured weights:
    (p-value, mismatch at SRM_ALPHA). Arms of weight 0 are left out."""
    pairs = [(c, w) for c, w in zip(counts, weights, strict=True) if w > 0]
    total = sum(c for c, _ in pairs)
    if total == 0 or len(pairs) < 2:
        return 1.0, False
    wsum = sum(w for _, w in pairs)
    expected = [total * w / wsum for _, w in pairs]
    p = float(_scipy_stats().chisquare([c for c, _ in pairs], expected).pvalue)
    return p, p < SRM_ALPHA


def sample_size_per_arm(baseline: float, mde: float, alpha: float, power: float) -> int:
    """Fixed-horizon sample size per arm for a two-sided two-proportion z-test
    to detect `baseline` -> `baseline + mde` (Fleiss; without continuity
    correction). The always-valid test needs more: see msprt_sample_size."""
    # The harder of the two directions: towards 50%, where variance is highest.
    p1, p2 = baseline, baseline + mde if baseline < 0.5 else baseline - mde
    p2 = min(1.0, max(0.0, p2))
    pbar = (p1 + p2) / 2
    za, zb = _scipy_stats().norm.ppf(1 - alpha / 2), _scipy_stats().norm.ppf(power)
    num = za * math.sqrt(2 * pbar * (1 - pbar)) + zb * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return math.ceil(num * num / (mde * mde))


def msprt_sample_size(pair_variance: float, mde: float, alpha: float, power: float) -> int:
    """The smallest n per arm at which the mSPRT (tau = mde), read at n alone,
    rejects with probability `power` when the true difference is `mde`; the
    variance of the difference of means is pair_variance / n. Its boundary
    on |θ̂|/√V is √(2(V+τ²)/τ² · (ln(1/α) + ½ ln((V+τ²)/V))). Reading it
    earlier as well only adds chances to reject, so the power is at least
    that, for any alpha (tests/test_experiment_stats.py checks 0.01-0.2)."""
    tau2 = mde * mde

    def power_at(n: int) -> float:
        v = pair_variance / n
        boundary = math.sqrt(
            2 * (v + tau2) / tau2 * (math.log(1 / alpha) + 0.5 * math.log((v + tau2) / v))
        )
        return float(_scipy_stats().norm.sf(boundary - mde / math.sqrt(v)))

    lo, hi = 1, 2
    while power_at(hi) < power:
        lo, hi = hi, hi * 2
    while lo < hi:  # bisection: the power grows with n
        mid = (lo + hi) // 2
        if power_at(mid) >= power:
            hi = mid
        else:
            lo = mid + 1
    return lo


def sequential_sample_size(baseline: float, mde: float, alpha: float, power: float = 0.8) -> int:
    """Samples per arm after which an experiment whose always-valid p-value
    has not crossed alpha ends with "no difference": a success rate moving
    by `mde` from `baseline` towards 50% (the harder direction)."""
    p2 = baseline + mde if baseline < 0.5 else baseline - mde
    p2 = min(1.0, max(0.0, p2))
    pair_variance = baseline * (1 - baseline) + p2 * (1 - p2)
    return msprt_sample_size(max(pair_variance, 1e-12), mde, alpha, power)


# --- one-sided sequential guardrails (canaries) -------------------------------


def exceeds(theta: Any, variance: Any, tau2: float, alpha: float) -> Any:
    """Confident that the true θ > 0, reading at any time: the mSPRT of θ = 0
    rejects and the estimate is positive. (A two-sided always-valid test used
    one way keeps its error below alpha.)"""
    p = msprt_p_value(theta, variance, tau2)
    return np.logical_and(np.asarray(theta) > 0, np.asarray(p) <= alpha)


def error_rate_breach(
    n_c: Any, err_c: Any, n_b: Any, err_b: Any, max_increase: float, alpha: float
) -> tuple[Any, Any]:
    """Canary error rate minus baseline's over `max_increase`: (point estimate
    of the excess, breached with confidence). Each rate's variance has a floor
    of one error in n + 1 (no errors yet is no evidence of zero variance)."""
    n_c, err_c, n_b, err_b = (np.asarray(x, dtype=float) for x in (n_c, err_c, n_b, err_b))
    safe_c, safe_b = np.maximum(n_c, 1), np.maximum(n_b, 1)
    r_c, r_b = err_c / safe_c, err_b / safe_b
    excess = r_c - r_b - max_increase
    v_c = np.maximum(r_c * (1 - r_c), 1 / (safe_c + 1)) / safe_c
    v_b = np.maximum(r_b * (1 - r_b), 1 / (safe_b + 1)) / safe_b
    tau2 = max(max_increase, 0.05) ** 2
    breach = np.logical_and(np.minimum(n_c, n_b) >= 1, exceeds(excess, v_c + v_b, tau2, alpha))
    return _as_float(excess), _as_bool(breach)


# Latency: the canary's p95 over ratio x the baseline's means more than 5% of
# canary requests are slower than ratio x baseline p95; that share is what is
# tested, against 5%, so a quantile needs no variance formula.
P95_SHARE = 0.05


def slow_share_breach(n_c: Any, slow_c: Any, alpha: float) -> tuple[Any, Any]:
    """(share of canary requests over ratio x baseline p95, breached with
    confidence that the share exceeds 5%)."""
    n_c, slow_c = np.asarray(n_c, dtype=float), np.asarray(slow_c, dtype=float)
    safe = np.maximum(n_c, 1)
    share = slow_c / safe
    v = P95_SHARE * (1 - P95_SHARE) / safe
    breach = np.logical_and(n_c >= 1, exceeds(share - P95_SHARE, v, P95_SHARE**2, alpha))
    return _as_float(share), _as_bool(breach)


def _as_bool(x: Any) -> Any:
    return x if isinstance(x, np.ndarray) and x.ndim else bool(x)


def cost_ratio_breach(c: Summary, b: Summary, max_ratio: float, alpha: float) -> bool:
    """The canary's mean cost over max_ratio x the baseline's, with confidence:
    θ = mean_c - r·mean_b, V = s_c²/n_c + r² s_b²/n_b, tau = a quarter of
    r·mean_b."""
    if c.n < 2 or b.n < 2 or not b.mean:
        return False
    theta = (c.mean or 0.0) - max_ratio * b.mean
    v = c.variance / c.n + max_ratio * max_ratio * b.variance / b.n
    tau2 = (0.25 * max_ratio * b.mean) ** 2
    if v <= 0:
        return theta > 0 and min(c.n, b.n) >= MIN_SEQUENTIAL_N
    return bool(exceeds(theta, v, tau2, alpha))


def sequential_sample_size_means(
    variance: float, mde: float, alpha: float, power: float = 0.8
) -> int:
    """The same for a difference of means of this variance (per arm)."""
    return msprt_sample_size(max(2 * variance, 1e-12), mde, alpha, power)
