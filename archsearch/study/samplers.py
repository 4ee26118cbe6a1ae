"""``sampler: {name, seed, options}`` -> an Optuna sampler.

Constraints are not given to the samplers as ``constraints_func`` (deprecated in Optuna 5): each
trial records them with ``trial.set_constraint``, which every sampler and ``plot_pareto_front`` read
(and in the legacy list optuna-dashboard reads: :func:`archsearch.study.storage.set_constraints`).
"""
from __future__ import annotations

import optuna

from snapgen.errors import UserError


def make_sampler(cfg, space, *, file: str | None = None) -> optuna.samplers.BaseSampler:
    s = optuna.samplers
    opts = dict(cfg.options or {})
    builders = {
        "tpe": lambda: s.TPESampler(seed=cfg.seed, **opts),
        "nsga2": lambda: s.NSGAIISampler(seed=cfg.seed, **opts),
        "nsga3": lambda: s.NSGAIIISampler(seed=cfg.seed, **opts),
        "gp": lambda: s.GPSampler(seed=cfg.seed, **opts),
        "random": lambda: s.RandomSampler(seed=cfg.seed, **opts),
        "grid": lambda: s.GridSampler(space.grid(), seed=cfg.seed, **opts),
    }
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return builders[cfg.name]()
    except TypeError as e:
        raise UserError(f"bad option for the {cfg.name} sampler: {e}", file=file, key="sampler.options") from None
    except ValueError as e:
        raise UserError(f"bad option for the {cfg.name} sampler: {e}", file=file, key="sampler.options") from None
