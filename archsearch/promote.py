"""From a study to a training run: pick a trial and write its ``snapgen train`` config.

Selection:

* ``trial=N``: that trial (COMPLETE, with an architecture).
* ``pick="knee"``: the knee of the Pareto front — the non-dominated trial closest (Euclidean) to the
  ideal point once each objective is min-max normalised over the front (directions respected).
* ``pick="min|max METRIC [where METRIC OP NUMBER [and ...]]"``: e.g. ``min latency_ms where fd-fmnist <= 60``,
  over COMPLETE feasible trials; METRIC is an objective or any recorded metric of the trials.

The config holds the trial's full-size ArchSpec, the study's proxy settings (the same data,
autoencoder, text encoder and metric), and provenance: study, run directory, trial, its objective
values and metrics, the selection rule, and the code version of both the trial and the promotion.
"""
from __future__ import annotations

import datetime
import math
import re
from pathlib import Path

from snapgen.errors import UserError

from archsearch.fidelity.in_study import check_rule_names, reference_of

OPS = {"<=": lambda a, b: a <= b, "<": lambda a, b: a < b, ">=": lambda a, b: a >= b, ">": lambda a, b: a > b,
       "==": lambda a, b: a == b}
_RULE = re.compile(r"^\s*(min|max)\s+([A-Za-z_][\w.-]*)\s*(?:where\s+(.+))?$", re.I)  # - : ref_fd-fmnist
_COND = re.compile(r"^\s*([A-Za-z_][\w.-]*)\s*(<=|>=|==|<|>)\s*([-+0-9.eE]+)\s*$")


def trial_metrics(run, t) -> dict:
    m = dict(t.user_attrs.get("metrics") or {})
    if t.values is not None:
        m.update(dict(zip(run.names, t.values)))
    m.update(reference_of(run, t))  # ref_<metric>: the study's fidelity: section, from RUN_DIR
    return m


def candidates(run) -> list:
    from archsearch.study.pareto import completed, feasible

    return [t for t in completed(run) if "spec" in t.user_attrs and "duplicate_of" not in t.user_attrs and feasible(t)]


def parse_rule(rule: str):
    m = _RULE.match(rule)
    if not m:
        raise UserError(f"cannot parse {rule!r}; expected 'knee' or 'min|max METRIC [where METRIC OP NUMBER "
                        "[and ...]]' with OP one of <=, <, >=, >, ==", key="--pick")
    conds = []
    if m.group(3):
        for part in re.split(r"\s+and\s+", m.group(3), flags=re.I):
            c = _COND.match(part)
            if not c:
                raise UserError(f"cannot parse the condition {part!r}; expected METRIC OP NUMBER", key="--pick")
            try:
                conds.append((c.group(1), c.group(2), float(c.group(3))))
            except ValueError:
                raise UserError(f"not a number: {c.group(3)!r}", key="--pick") from None
    return m.group(1).lower(), m.group(2), conds


def pick_rule(run, rule: str):
    sense, metric, conds = parse_rule(rule)
    trials = candidates(run)
    known = sorted({k for t in trials for k in trial_metrics(run, t)})
    note = check_rule_names([metric] + [c[0] for c in conds], [trial_metrics(run, t) for t in trials], run)
    for name in [metric] + [c[0] for c in conds]:
        if name not in known:
            raise UserError(f"unknown metric {name!r}; allowed: {', '.join(known) or '(no completed trials)'}",
                            key="--pick")
    ok = []
    for t in trials:
        m = trial_metrics(run, t)
        if m.get(metric) is None or not math.isfinite(m[metric]):
            continue
        if all(m.get(k) is not None and OPS[op](m[k], v) for k, op, v in conds):
            ok.append((m[metric], t.number, t))
    if not ok:
        raise UserError(f"no completed feasible trial satisfies {rule!r} ({len(trials)} candidates{note})",
                        key="--pick")
    ok.sort(key=lambda x: (x[0] if sense == "min" else -x[0], x[1]))
    return ok[0][2]


def pick_knee(run):
    from archsearch.study.pareto import pareto_trials

    front = [t for t in pareto_trials(run) if "spec" in t.user_attrs]
    if not front:
        raise UserError("the study has no Pareto front yet (no completed feasible trial)", key="--pick")
    cols = list(zip(*[t.values for t in front]))
    best, best_d = None, math.inf
    for t in front:
        d = 0.0
        for i, (v, d_) in enumerate(zip(t.values, run.directions)):
            lo, hi = min(cols[i]), max(cols[i])
            x = 0.0 if hi == lo else (v - lo) / (hi - lo)
            d += (x if d_ == "minimize" else 1 - x) ** 2
        if d < best_d - 1e-12 or (abs(d - best_d) <= 1e-12 and t.number < best.number):
            best, best_d = t, d
    return best


def pick_trial(run, number: int):
    from optuna.trial import TrialState

    ts = [t for t in run.study.get_trials(deepcopy=False) if t.number == number]
    if not ts:
        raise UserError(f"no trial {number} in study {run.cfg['name']!r} ({len(run.study.trials)} trials)",
                        key="--trial")
    t = ts[0]
    if t.state != TrialState.COMPLETE or "spec" not in t.user_attrs:
        raise UserError(f"trial {number} is {t.state.name}"
                        f"{' without an architecture' if 'spec' not in t.user_attrs else ''}; promote a COMPLETE one",
                        key="--trial")
    return t


def promote(run_dir: str | Path, *, trial: int | None = None, pick: str | None = None, stage: str = "base",
            output_dir: str | None = None):
    """-> (TrainConfig, the chosen optuna trial)."""
    from snapgen.proxy import ProxyConfig
    from snapgen.spec import ArchSpec
    from snapgen.train.config import TrainConfig, validate

    from archsearch.study.pareto import load_run
    from archsearch.study.provenance import code_version

    if (trial is None) == (pick is None):
        raise UserError("give exactly one of --trial N or --pick RULE", key="--trial")
    run = load_run(run_dir)
    if trial is not None:
        t, how = pick_trial(run, trial), f"trial {trial}"
    elif pick.strip().lower() == "knee":
        t, how = pick_knee(run), "knee of the Pareto front (closest to the ideal point, min-max normalised)"
    else:
        t, how = pick_rule(run, pick), pick.strip()
    spec = ArchSpec.from_dict(t.user_attrs["spec"])  # checks it still builds
    from snapgen.train.config import TRAIN_OWNED  # the recipe, budget and device: the train section's

    proxy_keys = {f for f in ProxyConfig.__dataclass_fields__}
    study_proxy = {k: v for k, v in dict(run.cfg.get("proxy") or {}).items()
                   if k in proxy_keys and k not in TRAIN_OWNED + ("eval_every", "eval_at")}
    rec_file = Path(run_dir) / "trials" / str(t.number) / "trial.json"
    trial_code = None
    if rec_file.is_file():
        import json

        try:
            trial_code = json.loads(rec_file.read_text()).get("code_version")
        except ValueError:
            trial_code = None
    name = run.cfg["name"]
    cfg = TrainConfig(
        stage=stage, output_dir=output_dir or f"runs/train/{name}-trial{t.number}", arch=spec.to_dict(),
        proxy=study_proxy,
        provenance={
            "study": name, "run_dir": str(Path(run_dir).resolve()), "trial": t.number, "selection": how,
            "objectives": dict(zip(run.names, t.values)), "directions": dict(zip(run.names, run.directions)),
            "metrics": trial_metrics(run, t), "proxy_metric": t.user_attrs.get("proxy_metric"),
            "spec_hash": t.user_attrs.get("spec_hash"), "trial_code_version": trial_code,
            "code_version": code_version(),
            "promoted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
    return validate(cfg), t
