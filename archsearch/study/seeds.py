"""``seeds: N``: a trial's quality scored over several training seeds, and a front that respects the spread.

Seeds: trial k's seed i is ``seed + i`` for every trial (common random numbers: two trials differ by
their architecture, not by the luck of their seeds; ``seeds: 1`` is the study as before). They run one
after another in the trial's worker. The first runs with the study's early stopping, as a one-seed
trial does: its intermediate evaluations are the trial's learning curve and what the rungs compare
(every trial's first seed is the same seed). The others run only if it survived, to the end, with
no rung decisions. The objective is the mean; the user attribute ``quality_seeds`` holds the seeds,
the per-seed values, the mean, the standard deviation (ddof 1) and the standard error std / sqrt(N)
(:func:`archsearch.stats.summarise_seeds`). An early-stopped trial has its first seed's value at the
rung and no ``quality_seeds``.

Front: with N > 1 the run's Pareto front is :func:`archsearch.stats.noisy_front` over the feasible
completed trials, with each trial's standard error on the quality objective (0 on the exact ones:
params, GFLOPs, latency): a trial stays on it unless another is no worse in every exact objective and
better in quality by more than ``Z95`` (1.96) times the combined standard error
sqrt(se_a^2 + se_b^2). It holds Optuna's ``best_trials`` and the trials within the noise of them.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

from archsearch.stats import Z95, noisy_front, summarise_seeds

ATTR = "quality_seeds"  # the trial's user attribute


def trial_seeds(cfg) -> list[int]:
    """The training seeds of every trial: ``seed, seed + 1, ..., seed + seeds - 1``."""
    return [int(cfg.seed) + i for i in range(int(cfg.seeds))]


@dataclass(frozen=True)
class SeedsResult:
    """The quality of one trial over its seeds, shaped like a metric's result (``value`` is the mean)."""

    metric: str
    value: float
    steps: int
    summary: dict  # what ATTR holds
    per_seed: tuple  # each seed's own result object

    def to_dict(self) -> dict:
        runs = []
        for r in self.per_seed:
            d = r.to_dict()
            d.pop("spec", None)
            runs.append(d)
        return {"metric": self.metric, "value": self.value, "steps": self.steps, "seeds": self.summary,
                "per_seed": runs}


def _at_seed(runner, seed: int):
    """The trial runner with another training seed (the same object otherwise)."""
    r = copy.copy(runner)
    r.cfg = dataclasses.replace(runner.cfg, seed=int(seed))
    r.study = dataclasses.replace(runner.study, cfg=r.cfg)
    return r


def run_quality(runner, spec, metrics: dict, on_eval, trial):
    """The trial's quality through ``runner.run_quality`` (the study's metric dispatch), over the study's
    seeds; records ``quality_seeds`` on ``trial`` when there are several and the first one survived."""
    seeds = trial_seeds(runner.cfg)
    if len(seeds) == 1:
        return runner.run_quality(spec, metrics, on_eval)
    stopped = False

    def first_seed(step: int, value: float) -> bool:
        nonlocal stopped
        stop = bool(on_eval(step, value)) if on_eval is not None else False
        stopped = stopped or stop
        return stop

    results = [_at_seed(runner, seeds[0]).run_quality(spec, metrics, first_seed)]
    if stopped:
        return results[0]  # early-stopped: the runner prunes it at its rung, as with one seed
    results += [_at_seed(runner, s).run_quality(spec, metrics, None) for s in seeds[1:]]
    values = [float(r.value) for r in results]
    s = summarise_seeds(values)
    summary = {"objective": runner.quality, "metric": results[0].metric, "seeds": seeds, "values": values,
               "mean": s.mean, "std": s.std, "se": s.sem, "n": s.n}
    trial.set_user_attr(ATTR, summary)
    return SeedsResult(metric=results[0].metric, value=s.mean, steps=int(results[-1].steps), summary=summary,
                       per_seed=tuple(results))


def standard_errors(names: list[str], t) -> list[float]:
    """Per objective of trial ``t``: its quality's standard error over seeds, 0 elsewhere (exact objectives,
    or a trial without seeds)."""
    s = t.user_attrs.get(ATTR) or {}
    return [float(s["se"]) if n == s.get("objective") and s.get("se") is not None else 0.0 for n in names]


def noisy_pareto_trials(run, *, z: float = Z95) -> list:
    """The run's front that respects the seed spread (see the module doc), sorted by the first objective;
    a repeated architecture (``duplicate_of``) is one point, as on the plain front."""
    from archsearch.study.pareto import completed, feasible

    trials = [t for t in completed(run) if feasible(t) and "duplicate_of" not in t.user_attrs]
    if not trials:
        return []
    keep = noisy_front([t.values for t in trials], run.directions,
                       [standard_errors(run.names, t) for t in trials], z=z)
    return sorted((trials[i] for i in keep), key=lambda t: (t.values[0], t.number))


def quality_cell(p: dict, name: str) -> str | None:
    """``mean ± se`` of a Pareto row's quality objective when it was scored over several seeds, else None."""
    s = p.get("seeds") or {}
    if s.get("objective") != name or s.get("se") is None:
        return None
    return f"{s['mean']:.4g}±{s['se']:.2g}"
