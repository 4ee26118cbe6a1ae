"""archsearch.stats: seed aggregation, rank agreement with bootstrap intervals, seed noise, noisy fronts."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import kendalltau, spearmanr

from archsearch.stats import (confidently_dominates, front_recovery, noisy_front, rank_agreement, seed_noise,
                              summarise_seeds)
from archsearch.study.early_stopping import non_domination_rank


def test_summarise_seeds():
    v = [3.0, 5.0, 10.0]
    s = summarise_seeds(v)
    assert s.n == 3 and s.mean == pytest.approx(6.0)
    assert s.std == pytest.approx(np.std(v, ddof=1)) and s.sem == pytest.approx(np.std(v, ddof=1) / math.sqrt(3))
    one = summarise_seeds([2.5])
    assert one.std == 0.0 and math.isnan(one.sem)
    with pytest.raises(ValueError):
        summarise_seeds([1.0, float("nan")])


def test_monotone_transform_gives_rho_one():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=15)
    proxy = np.exp(2 * ref) + 3  # any strictly increasing transform
    r = rank_agreement(proxy, ref, n_resamples=500)
    for name in ("spearman", "kendall"):
        assert r[name]["value"] == pytest.approx(1.0)
        assert r[name]["low"] == pytest.approx(1.0) and r[name]["high"] == pytest.approx(1.0)
    assert rank_agreement(-proxy, ref, n_resamples=300)["spearman"]["value"] == pytest.approx(-1.0)


def test_pure_noise_intervals_cover_zero():
    """Independent proxy and reference: the 95% interval holds 0 in most data sets (calibration)."""
    rng = np.random.default_rng(1)
    cover = {"spearman": 0, "kendall": 0}
    widths = []
    trials = 100
    for i in range(trials):
        x, y = rng.normal(size=20), rng.normal(size=20)
        r = rank_agreement(x, y, n_resamples=500, seed=i)
        for name in cover:
            cover[name] += r[name]["low"] <= 0 <= r[name]["high"]
        widths.append(r["spearman"]["high"] - r["spearman"]["low"])
        assert r["spearman"]["value"] == pytest.approx(spearmanr(x, y).statistic)
        assert r["kendall"]["value"] == pytest.approx(kendalltau(x, y).statistic)
    assert cover["spearman"] >= 0.88 * trials and cover["kendall"] >= 0.88 * trials, cover  # nominal 0.95
    assert min(widths) > 0.3  # an interval, not a point


def test_real_signal_interval_excludes_zero_and_degenerate_resamples_are_dropped():
    rng = np.random.default_rng(2)
    ref = np.arange(8, dtype=float)
    proxy = ref + rng.normal(scale=1.0, size=8)
    r = rank_agreement(proxy, ref, n_resamples=1000)
    s = r["spearman"]
    assert s["low"] > 0 and s["low"] <= s["value"] <= s["high"] <= 1
    # with 8 architectures some resamples repeat one architecture 8 times (or are otherwise constant): dropped
    assert 900 < s["resamples_used"] <= 1000
    two = rank_agreement([1.0, 2.0], [3.0, 5.0])
    assert two["spearman"]["value"] == pytest.approx(1.0) and math.isnan(two["spearman"]["low"])


def test_seed_noise_by_hand():
    groups = [[1.0, 3.0], [5.0, 7.0], [10.0, 12.0]]  # within-architecture variance 2 everywhere
    n = seed_noise(groups)
    assert n["noise"] == pytest.approx(math.sqrt(2))
    means = [2.0, 6.0, 11.0]
    assert n["spread"] == pytest.approx(np.std(means, ddof=1))
    assert n["snr"] == pytest.approx(np.std(means, ddof=1) / math.sqrt(2))
    assert n["resolvable_single_seed"] == pytest.approx(4.0)  # 2 sqrt(2) sqrt(2)
    assert n["resolvable_mean"] == pytest.approx(2 * math.sqrt(2 / 2) * math.sqrt(2))
    assert n["spread_denoised"] == pytest.approx(math.sqrt(np.var(means, ddof=1) - 2 / 2))
    # one seed per architecture: no noise estimate
    assert math.isnan(seed_noise([[1.0], [2.0]])["noise"])
    # unequal seed counts pool by degrees of freedom
    u = seed_noise([[0.0, 2.0, 4.0], [10.0, 12.0]])  # ss 8 over 2 dof, ss 2 over 1 dof
    assert u["noise"] == pytest.approx(math.sqrt(10 / 3))


def test_seed_noise_recovers_the_generating_noise():
    rng = np.random.default_rng(3)
    true = rng.normal(scale=10.0, size=40)
    groups = [t + rng.normal(scale=1.0, size=30) for t in true]
    n = seed_noise(groups)
    assert n["noise"] == pytest.approx(1.0, rel=0.1)
    assert n["spread"] == pytest.approx(np.std(true, ddof=1), rel=0.05)
    assert n["snr"] == pytest.approx(np.std(true, ddof=1), rel=0.15)


def test_noisy_front_without_noise_is_the_pareto_front():
    rng = np.random.default_rng(4)
    for _ in range(20):
        v = rng.integers(0, 6, size=(25, 3)).astype(float)  # ties included
        ours = noisy_front(v, ["minimize"] * 3)
        assert ours == [i for i, r in enumerate(non_domination_rank(v)) if r == 0]
    # a maximised objective is the minimisation of its negative
    v = rng.normal(size=(30, 2))
    assert noisy_front(v, ["maximize", "minimize"]) == [
        i for i, r in enumerate(non_domination_rank(v * [-1, 1])) if r == 0]


def test_noisy_front_keeps_what_the_noise_cannot_separate():
    # quality (noisy, minimised) and params (exact)
    v = np.array([[10.0, 5.0], [10.5, 5.0], [20.0, 5.0], [9.0, 8.0]])
    assert noisy_front(v, ["minimize", "minimize"]) == [0, 3]  # 1 and 2 are dominated by 0
    se = np.array([[1.0, 0.0]] * 4)  # margin 1.96 sqrt(2) = 2.8 on quality
    front = noisy_front(v, ["minimize", "minimize"], se)
    assert front == [0, 1, 3]  # 0.5 apart is within the noise; 10 apart is not
    assert set(noisy_front(v, ["minimize", "minimize"])) <= set(front)
    assert confidently_dominates(v[0], v[2], ["minimize", "minimize"], se[0], se[2])
    assert not confidently_dominates(v[0], v[1], ["minimize", "minimize"], se[0], se[1])
    assert not confidently_dominates(v[0], v[0], ["minimize", "minimize"])  # nothing dominates itself


def test_front_recovery():
    r = front_recovery(["a", "b", "c"], ["b", "c", "d", "e"])
    assert (r["recovered"], r["of"], r["proxy_front_size"]) == (2, 4, 3) and r["share"] == pytest.approx(0.5)
    assert r["members"] == ["b", "c"]


def test_batched_statistics_match_scipy():
    """The bootstrap's batched Spearman / Kendall tau-b equal scipy's, ties and constant rows included."""
    from archsearch.stats import _kendall, _spearman

    rng = np.random.default_rng(5)
    x = rng.integers(0, 5, size=(50, 9)).astype(float)  # many ties
    y = rng.integers(0, 5, size=(50, 9)).astype(float)
    x[0] = 1.0  # a constant row: undefined
    rho, tau = _spearman(x, y), _kendall(x, y)
    assert math.isnan(rho[0]) and math.isnan(tau[0])
    for i in range(1, 50):
        assert rho[i] == pytest.approx(spearmanr(x[i], y[i]).statistic, abs=1e-12)
        assert tau[i] == pytest.approx(kendalltau(x[i], y[i]).statistic, abs=1e-12)
