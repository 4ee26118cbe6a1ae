"""Statistics of a noisy measurement instrument: seed aggregation, rank agreement, seed noise, and a
Pareto front that respects the spread.

The proxy quality of an architecture is a random variable (the training seed decides the
initialisation, the data order and the sampling noise). These helpers say how much of a ranking is
signal:

* :func:`summarise_seeds`   mean, standard deviation and standard error over the seeds of one architecture;
* :func:`rank_agreement`    Spearman rho and Kendall tau between two scorings of the same architectures,
                            each with a bootstrap interval over architectures;
* :func:`seed_noise`        the pooled standard deviation over seeds at one architecture against the
                            spread of the per-architecture means (a signal-to-noise ratio), and the
                            smallest difference the instrument resolves at ~95 %;
* :func:`confidently_dominates` / :func:`noisy_front`  Pareto dominance with a noise margin: a point
                            leaves the front only if another one beats it by more than the noise.

Everything here works on plain numbers (lists / numpy arrays); nothing knows about Optuna or runs.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

Z95 = 1.959963984540054  # two-sided 95 % quantile of the standard normal


@dataclass(frozen=True)
class SeedSummary:
    """One architecture scored with ``n`` seeds."""

    mean: float
    std: float  # sample standard deviation over seeds (ddof=1); 0 for one seed
    n: int
    sem: float  # standard error of the mean, std / sqrt(n); nan for one seed (unknown)

    def to_dict(self) -> dict:
        return asdict(self)


def summarise_seeds(values: Sequence[float]) -> SeedSummary:
    """Mean and spread of one architecture's values over seeds (what a study records with ``seeds: N``)."""
    v = np.asarray(list(values), dtype=float)
    if v.size == 0:
        raise ValueError("no values to summarise")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"non-finite value among {v.tolist()}")
    n = int(v.size)
    std = float(v.std(ddof=1)) if n > 1 else 0.0
    return SeedSummary(mean=float(v.mean()), std=std, n=n, sem=std / math.sqrt(n) if n > 1 else float("nan"))


# ---- rank agreement -------------------------------------------------------------------------------
def _spearman(x, y, axis=-1):
    """Spearman rho along the last axis: Pearson's r of scipy's average ranks (ties as scipy.stats.spearmanr
    treats them). Written for a batch of bootstrap resamples at once, which scipy's spearmanr is not."""
    from scipy.stats import rankdata

    rx, ry = rankdata(x, axis=-1), rankdata(y, axis=-1)
    rx = rx - rx.mean(axis=-1, keepdims=True)
    ry = ry - ry.mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(-1) / np.sqrt((rx * rx).sum(-1) * (ry * ry).sum(-1))


def _kendall(x, y, axis=-1):
    """Kendall tau-b along the last axis, sum sign(dx) sign(dy) / sqrt(sum sign(dx)^2 sum sign(dy)^2) over all
    pairs (equal to scipy.stats.kendalltau's tau-b, ties included), batched like :func:`_spearman`."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    dx = np.sign(x[..., :, None] - x[..., None, :])
    dy = np.sign(y[..., :, None] - y[..., None, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        return (dx * dy).sum((-1, -2)) / np.sqrt((dx * dx).sum((-1, -2)) * (dy * dy).sum((-1, -2)))


def rank_agreement(x: Sequence[float], y: Sequence[float], *, n_resamples: int = 2000, confidence: float = 0.95,
                   seed: int = 0) -> dict:
    """Spearman rho and Kendall tau (tau-b) between ``x`` and ``y`` (paired by architecture), each with a
    percentile bootstrap interval that resamples architectures.

    The point estimates are scipy's (``spearmanr``, ``kendalltau``); the resampling is scipy's
    (``scipy.stats.bootstrap``, paired) with the batched statistics above; the interval is taken with
    ``np.percentile`` over its bootstrap distribution rather than scipy's own, because scipy's is NaN
    as soon as one resample is degenerate (with K architectures, a resample can hold one of them K
    times, and a correlation of a constant is undefined). Those resamples are dropped and counted
    (``resamples_used``)."""
    from scipy.stats import bootstrap, kendalltau, spearmanr

    x = np.asarray(list(x), dtype=float)
    y = np.asarray(list(y), dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of the same length, got {x.shape} and {y.shape}")
    if len(x) < 2:
        raise ValueError(f"a rank correlation needs >= 2 architectures, got {len(x)}")
    out = {"n": int(len(x)), "confidence": confidence, "method": "percentile bootstrap over architectures"}
    alpha = 100 * (1 - confidence) / 2
    point = {"spearman": lambda: spearmanr(x, y).statistic, "kendall": lambda: kendalltau(x, y).statistic}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConstantInputWarning of degenerate data
        for name, fn in (("spearman", _spearman), ("kendall", _kendall)):
            value = float(point[name]())
            if len(x) < 3:  # two points: +-1 by construction, and no resample is informative
                out[name] = {"value": value, "low": float("nan"), "high": float("nan"), "resamples_used": 0,
                             "resamples": 0}
                continue
            res = bootstrap((x, y), fn, paired=True, vectorized=True, n_resamples=n_resamples, method="percentile",
                            batch=max(1, int(2e6 // len(x) ** 2)), rng=np.random.default_rng(seed))
            dist = np.asarray(res.bootstrap_distribution, dtype=float)
            ok = dist[np.isfinite(dist)]
            lo, hi = (np.percentile(ok, [alpha, 100 - alpha]) if len(ok) else (float("nan"), float("nan")))
            out[name] = {"value": value, "low": float(lo), "high": float(hi), "resamples_used": int(len(ok)),
                         "resamples": n_resamples}
    return out


# ---- seed noise -----------------------------------------------------------------------------------
def seed_noise(per_arch: Sequence[Sequence[float]]) -> dict:
    """Seed noise against architecture spread, from each architecture's values over its seeds.

    * ``noise``: the pooled within-architecture standard deviation, sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1))
      (architectures with one seed contribute nothing to it);
    * ``spread``: the standard deviation (ddof=1) of the per-architecture means;
    * ``snr`` = spread / noise;
    * ``resolvable_single_seed`` = 2 sqrt(2) noise: the smallest difference between two architectures
      scored with one seed each that is outside the noise at ~95 % (the difference of two single-seed
      values has standard deviation sqrt(2) noise; 2 ~ the 95 % normal quantile), and
      ``resolvable_mean`` the same for the means over ``seeds`` seeds (2 sqrt(2 / seeds) noise).

    The spread of means still holds noise / sqrt(seeds) of noise; ``spread_denoised`` subtracts it
    (sqrt(max(0, spread^2 - noise^2 / seeds))), an estimate of the spread of the architectures' true values.
    """
    groups = [np.asarray(list(g), dtype=float) for g in per_arch]
    if len(groups) < 2:
        raise ValueError(f"seed noise needs >= 2 architectures, got {len(groups)}")
    if any(g.size == 0 for g in groups):
        raise ValueError("an architecture has no values")
    dof = sum(g.size - 1 for g in groups)
    noise = math.sqrt(sum(((g - g.mean()) ** 2).sum() for g in groups) / dof) if dof > 0 else float("nan")
    means = np.array([g.mean() for g in groups])
    spread = float(means.std(ddof=1))
    seeds = min(g.size for g in groups)
    out = {"architectures": len(groups), "seeds": int(seeds), "noise": noise, "spread": spread,
           "snr": spread / noise if dof > 0 and noise > 0 else (float("inf") if dof > 0 else float("nan")),
           "resolvable_single_seed": 2 * math.sqrt(2) * noise,
           "resolvable_mean": 2 * math.sqrt(2 / seeds) * noise,
           "spread_denoised": math.sqrt(max(0.0, spread ** 2 - noise ** 2 / seeds)) if dof > 0 else float("nan")}
    return out


# ---- Pareto fronts --------------------------------------------------------------------------------
def _as_minimised(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    v = np.array(values, dtype=float)
    if v.ndim != 2 or v.shape[1] != len(directions):
        raise ValueError(f"values must be (n, {len(directions)}), got {v.shape}")
    for j, d in enumerate(directions):
        if d not in ("minimize", "maximize"):
            raise ValueError(f"unknown direction {d!r}")
        if d == "maximize":
            v[:, j] = -v[:, j]
    return v


def confidently_dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str],
                          sa: Sequence[float] | None = None, sb: Sequence[float] | None = None, *,
                          z: float = Z95) -> bool:
    """Whether ``a`` dominates ``b`` by more than the noise: in every objective, ``a`` is no worse than
    ``b`` after giving ``b`` the benefit of the doubt, ``a_j + m_j <= b_j`` (minimised), with the margin
    ``m_j = z sqrt(sa_j^2 + sb_j^2)`` from the standard errors ``sa``, ``sb`` (0 for exact objectives,
    e.g. params), and strictly so in at least one. With no standard errors this is plain Pareto
    dominance."""
    v = _as_minimised(np.array([a, b]), directions)
    m = len(directions)
    se_a = np.zeros(m) if sa is None else np.nan_to_num(np.asarray(sa, dtype=float))
    se_b = np.zeros(m) if sb is None else np.nan_to_num(np.asarray(sb, dtype=float))
    margin = z * np.sqrt(se_a ** 2 + se_b ** 2)
    lhs, rhs = v[0] + margin, v[1]
    return bool(np.all(lhs <= rhs) and np.any(lhs < rhs))


def noisy_front(values: Sequence[Sequence[float]], directions: Sequence[str],
                se: Sequence[Sequence[float]] | None = None, *, z: float = Z95) -> list[int]:
    """Indices of the points that no other point :func:`confidently_dominates`.

    With ``se`` None (or all zeros) this is the ordinary Pareto front; with standard errors it is a
    superset of it: two architectures whose quality differs by less than the noise both stay unless
    one is also beaten elsewhere. O(n^2) pairs (fronts are re-scored over tens of trials)."""
    v = np.asarray(values, dtype=float)
    n = len(v)
    s = np.zeros_like(v) if se is None else np.asarray(se, dtype=float)
    if s.shape != v.shape:
        raise ValueError(f"se must have the shape of values {v.shape}, got {s.shape}")
    return [i for i in range(n)
            if not any(confidently_dominates(v[j], v[i], directions, s[j], s[i], z=z) for j in range(n) if j != i)]


def front_recovery(proxy_front: Sequence, reference_front: Sequence) -> dict:
    """How many members of the reference front the proxy front also holds."""
    p, r = set(proxy_front), set(reference_front)
    hit = sorted(p & r, key=str)
    return {"recovered": len(hit), "of": len(r), "share": len(hit) / len(r) if r else float("nan"),
            "proxy_front_size": len(p), "members": hit}
