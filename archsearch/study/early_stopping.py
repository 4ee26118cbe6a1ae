"""Successive-halving early stopping for multi-objective studies.

Optuna's pruners cannot serve here: ``trial.report`` raises in multi-objective studies. So this
is ours, after asynchronous successive halving (ASHA, Li et al. 2020) in its multi-objective form
(MO-ASHA, Schmucker et al. 2021): every intermediate evaluation of the proxy is a rung; when a
trial reaches a rung, it is ranked against every trial that reached the same rung before it —
infeasible trials after feasible ones, then by non-domination rank over the study's objectives
(the quality *at that rung*, and the cost objectives, which are exact from the start), then within
a rank by exclusive hypervolume contribution (SMS-EMOA's selection; objectives scaled by the study's
reference point, as `archsearch pareto` scores the front) — and it goes on only if it is in the best
``1/eta``. A stopped trial is PRUNED, with the rung, its value and the reason as user attributes; no
rung decides before ``min_trials`` trials reached it.

Ranking on all objectives (not the quality alone) matters: a small, fast architecture with a
mediocre proxy score is exactly what a Pareto front needs, and a quality-only rule would stop it.
Why hypervolume contribution and not NSGA-II's crowding distance (the first version): with 3-4
objectives and a handful of trials per rung, nearly every trial is non-dominated and an extreme in
some objective (crowding distance infinity, the worst extremes included), so the order fell back to
quality alone. Measured on the shipped study (docs/study.md): that rule stopped the two cheapest
architectures, both on the final front, and lost 5% of the hypervolume at the same budget.
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


@dataclass
class Decision:
    stop: bool
    reason: str
    peers: int


def hypervolume_contributions(scaled: np.ndarray) -> np.ndarray:
    """Exclusive hypervolume of each point of ``scaled`` (minimised, reference point 1 in every
    objective): the volume lost without it (volumes: :func:`archsearch.study.pareto.box_hypervolume`)."""
    from archsearch.study.pareto import box_hypervolume

    inside = np.all(scaled < 1.0, axis=1)
    out = np.zeros(len(scaled))
    pts = scaled[inside]
    if len(pts) == 0:
        return out
    total = box_hypervolume(pts)
    idx = np.where(inside)[0]
    for k, i in enumerate(idx):
        rest = np.delete(pts, k, axis=0)
        out[i] = total - (box_hypervolume(rest) if len(rest) else 0.0)
    return out


class SuccessiveHalving:
    def __init__(self, objective_names, directions, quality: str, *, eta: float = 3.0, min_trials: int = 4,
                 constraints=(), reference: dict | None = None):
        self.names = list(objective_names)
        self.directions = list(directions)
        self.signs = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
        self.reference = dict(reference or {})  # the study's stated reference point (missing: from the rung)
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

    def _scaled(self, raw: np.ndarray) -> np.ndarray:
        """Objectives scaled as `archsearch pareto` scales them (v/ref minimised, ref/v maximised);
        an objective without a stated reference gets 1.1 x the rung's worst (0.9 x maximised)."""
        from archsearch.study.pareto import scaled

        ref = []
        for j, (n, d) in enumerate(zip(self.names, self.directions)):
            worst = raw[:, j].max() if d == "minimize" else raw[:, j].min()
            ref.append(float(self.reference.get(n) or (1.1 * worst if d == "minimize" else 0.9 * worst) or 1.0))
        return scaled(raw, ref, self.directions)

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
        contrib = np.zeros(n)
        raw = vals * self.signs
        scaled = self._scaled(raw)
        for r in np.unique(ranks):
            idx = np.where(ranks == r)[0]
            contrib[idx] = hypervolume_contributions(scaled[idx])
        # SMS-EMOA's selection order: feasibility (violation), Pareto rank, exclusive hypervolume
        # (the smallest architecture is kept however mediocre its quality, if nobody else covers it).
        order = sorted(range(n), key=lambda i: (viols[i], ranks[i], -contrib[i], vals[i, q]))
        keep = max(1, math.ceil(n / self.eta))
        pos = order.index(0)
        if pos < keep:
            return Decision(False, f"rank {pos + 1}/{n} at step {step} (keeping {keep})", n - 1)
        return Decision(True, f"early-stopped at step {step}: {self.quality}={value:.4g} ranks {pos + 1}/{n} "
                              f"among trials at that step (successive halving keeps the best {keep}, eta={self.eta:g})",
                        n - 1)
