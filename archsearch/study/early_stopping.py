"""Successive-halving early stopping for multi-objective studies.

Optuna's pruners cannot serve here: ``trial.report`` raises in multi-objective studies. So this
is ours, after asynchronous successive halving (ASHA, Li et al. 2020) in its multi-objective form
(MO-ASHA, Schmucker et al. 2021): every intermediate evaluation of the proxy is a rung; when a
trial reaches a rung, it is ranked against every trial that reached the same rung before it —
infeasible trials after feasible ones, then by non-domination rank over the study's objectives
(the quality *at that rung*, and the cost objectives, which are exact from the start), then by
crowding distance (NSGA-II's selection) — and it goes on only if it is in the best ``1/eta``. A stopped trial is PRUNED, with the
rung, its value and the reason as user attributes; no rung decides before ``min_trials`` trials
reached it.

Ranking on all objectives (not the quality alone) matters: a small, fast architecture with a
mediocre proxy score is exactly what a Pareto front needs, and a quality-only rule would stop it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from optuna.trial import TrialState


def non_domination_rank(values: np.ndarray) -> np.ndarray:
    """Rank 0 for the non-dominated points, 1 for those dominated only by rank 0, ... (minimisation).

    Hand-written (O(n^2) per front; rungs hold tens of trials): Optuna's own non-dominated sort is
    private API."""
    n = len(values)
    rank = np.full(n, -1)
    remaining = np.arange(n)
    r = 0
    while len(remaining):
        v = values[remaining]
        dominated = np.array([
            np.any(np.all(v <= v[i], axis=1) & np.any(v < v[i], axis=1)) for i in range(len(remaining))])
        front = remaining[~dominated]
        rank[front] = r
        remaining = remaining[dominated]
        r += 1
    return rank


def crowding_distance(values: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance within one front (extremes get infinity), hand-written for the same reason."""
    n, m = values.shape
    d = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for j in range(m):
        order = np.argsort(values[:, j], kind="stable")
        span = values[order[-1], j] - values[order[0], j]
        d[order[0]] = d[order[-1]] = np.inf
        if span > 0:
            d[order[1:-1]] += (values[order[2:], j] - values[order[:-2], j]) / span
    return d


@dataclass
class Decision:
    stop: bool
    reason: str
    peers: int


class SuccessiveHalving:
    def __init__(self, objective_names, directions, quality: str, *, eta: float = 3.0, min_trials: int = 4,
                 constraints=()):
        self.names = list(objective_names)
        self.signs = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
        self.quality = quality
        self.eta = eta
        self.min_trials = min_trials
        self.constraints = list(constraints)

    def _violation(self, metrics: dict) -> float:
        v = 0.0
        for c in self.constraints:
            if c.metric in metrics:
                v += max(0.0, c.violation(metrics[c.metric]))
        return v

    def _vector(self, metrics: dict, q: float) -> list[float] | None:
        out = []
        for n in self.names:
            x = q if n == self.quality else metrics.get(n)
            if x is None:
                return None
            out.append(float(x))
        return out

    def decide(self, study, trial_number: int, step: int, value: float, metrics: dict) -> Decision:
        rows, viol = [], []
        me = self._vector(metrics, value)
        if me is None:
            return Decision(False, "objectives incomplete", 0)
        for t in study.get_trials(deepcopy=False):
            if t.number == trial_number or t.state == TrialState.WAITING:
                continue
            evals = {int(s): float(v) for s, v in t.user_attrs.get("evals", [])}
            if step not in evals:
                continue
            m = t.user_attrs.get("metrics", {})
            vec = self._vector(m, evals[step])
            if vec is not None:
                rows.append(vec)
                viol.append(self._violation(m))
        n = len(rows) + 1
        if n < self.min_trials:
            return Decision(False, f"{n} trial(s) at step {step} < min_trials={self.min_trials}", n - 1)
        vals = np.array([me] + rows) * self.signs
        viols = np.array([self._violation(metrics)] + viol)
        q = self.names.index(self.quality)
        ranks = non_domination_rank(vals)
        crowd = np.zeros(n)
        for r in np.unique(ranks):
            idx = np.where(ranks == r)[0]
            crowd[idx] = crowding_distance(vals[idx])
        # NSGA-II's selection order: feasibility (violation), Pareto rank, crowding distance (the
        # extremes of a front first: the smallest architecture is kept however mediocre its quality).
        order = sorted(range(n), key=lambda i: (viols[i], ranks[i], -crowd[i], vals[i, q]))
        keep = max(1, math.ceil(n / self.eta))
        pos = order.index(0)
        if pos < keep:
            return Decision(False, f"rank {pos + 1}/{n} at step {step} (keeping {keep})", n - 1)
        return Decision(True, f"early-stopped at step {step}: {self.quality}={value:.4g} ranks {pos + 1}/{n} "
                              f"among trials at that step (successive halving keeps the best {keep}, eta={self.eta:g})",
                        n - 1)
