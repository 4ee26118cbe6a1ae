"""A run directory -> its Optuna study, Pareto front and hypervolume.

The Pareto front is Optuna's ``study.best_trials`` (non-dominated, feasible COMPLETE trials).
The hypervolume is moocore's exact one (Optuna 5 has none in its public API; moocore is by the
authors of the reference implementation), on objectives scaled by the stated reference point:
``v / ref`` for minimised objectives and ``ref / v`` for maximised ones, so the reference point
maps to (1, ..., 1), the ideal to the origin, and the hypervolume is the fraction of the box
``[0, ref]`` that the front dominates (0..1, unit-free, comparable between runs of one study).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import yaml
from optuna.trial import TrialState

from snapgen.errors import UserError


@dataclass
class Run:
    dir: Path
    cfg: dict  # the resolved study file
    study: optuna.Study

    @property
    def names(self) -> list[str]:
        return [o["name"] for o in self.cfg["objectives"]]

    @property
    def directions(self) -> list[str]:
        return [o["direction"] for o in self.cfg["objectives"]]


def storage_url_for(run_dir: Path, cfg: dict) -> str:
    url = cfg.get("storage") or ""
    # The default SQLite file lives in the run directory: follow the directory if it was moved.
    if url.startswith("sqlite:///") and url.endswith("study.db") and (run_dir / "study.db").is_file():
        return f"sqlite:///{run_dir / 'study.db'}"
    return url


def load_run(run_dir: str | Path) -> Run:
    d = Path(run_dir)
    f = d / "study.yaml"
    if not f.is_file():
        raise UserError("not a run directory (no study.yaml); give the output_dir of `archsearch run`", file=str(d))
    cfg = yaml.safe_load(f.read_text())
    url = storage_url_for(d, cfg)
    from archsearch.study.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=cfg["name"], storage=open_storage(url))
    except KeyError:
        raise UserError(f"study {cfg['name']!r} not found in {url}", file=str(f), key="storage") from None
    return Run(d, cfg, study)


def fmt_metric(name: str, v) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    if name == "params":
        return f"{v / 1e6:.1f}M"
    if name.endswith("_ms"):
        return f"{v:.1f}ms"
    return f"{v:.4g}"


def reference_point(run: Run, trials=None) -> tuple[list[float], str]:
    """The study's stated reference point; objectives it leaves out get 1.1 x the worst feasible
    completed value (0.9 x for maximised ones), and the report says so."""
    stated = run.cfg.get("reference_point") or {}
    trials = trials if trials is not None else completed(run)
    ref, how = [], []
    for i, (n, d) in enumerate(zip(run.names, run.directions)):
        if n in stated:
            ref.append(float(stated[n]))
            how.append("stated")
            continue
        vals = [t.values[i] for t in trials]
        if not vals:
            ref.append(float("nan"))
        else:
            ref.append(max(vals) * 1.1 if d == "minimize" else min(vals) * 0.9)
        how.append("derived")
    note = "stated in the study file" if all(h == "stated" for h in how) else \
        "derived from the observed worst values (x1.1) for " + ", ".join(n for n, h in zip(run.names, how) if h != "stated")
    return ref, note


def completed(run: Run):
    return run.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def feasible(t) -> bool:
    return all(v <= 0 for v in t.constraints.values())


def scaled(values: np.ndarray, ref: list[float], directions: list[str]) -> np.ndarray:
    v = np.array(values, dtype=float).reshape(-1, len(ref))
    out = np.empty_like(v)
    for i, (r, d) in enumerate(zip(ref, directions)):
        out[:, i] = v[:, i] / r if d == "minimize" else r / np.maximum(v[:, i], 1e-300)
    return out


def box_hypervolume(points: np.ndarray) -> float:
    """Hypervolume of minimised ``points`` (n, m) against the reference point (1, ..., 1)."""
    import moocore

    return float(moocore.hypervolume(np.asarray(points, dtype=float), ref=np.ones(np.shape(points)[1])))


def hypervolume(trials, ref: list[float], directions: list[str]) -> float:
    """Fraction of the box [0, ref] dominated by ``trials`` (their values), see the module doc."""
    pts = [t.values for t in trials if t.values is not None and feasible(t)]
    if not pts or any(not np.isfinite(r) or r <= 0 for r in ref):
        return 0.0
    s = scaled(np.array(pts), ref, directions)
    s = s[np.all(s < 1.0, axis=1)]  # only points that dominate the reference point count
    if len(s) == 0:
        return 0.0
    return box_hypervolume(s)


def hypervolume_history(run: Run, ref: list[float]) -> list[tuple[int, float, float]]:
    """(trial number, hypervolume of the trials finished so far, seconds since the study started)."""
    trials = sorted([t for t in run.study.get_trials(deepcopy=False) if t.state.is_finished()],
                    key=lambda t: t.datetime_complete or t.datetime_start)
    if not trials:
        return []
    start = min(t.datetime_start for t in trials if t.datetime_start)
    done, out = [], []
    for t in trials:
        if t.state == TrialState.COMPLETE:
            done.append(t)
        out.append((t.number, hypervolume(done, ref, run.directions),
                    (t.datetime_complete - start).total_seconds() if t.datetime_complete else 0.0))
    return out


def pareto_trials(run: Run) -> list:
    """Optuna's ``best_trials`` (feasible, non-dominated), sorted by the first objective; a repeated
    architecture (values reused, see the runner) is one point of the front, not two."""
    if not completed(run):
        return []
    if int(run.cfg.get("seeds") or 1) > 1:  # the front respects the seed spread (archsearch.study.seeds)
        from archsearch.study.seeds import noisy_pareto_trials

        return noisy_pareto_trials(run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        best = sorted(run.study.best_trials, key=lambda t: t.values[0])
    return [t for t in best if "duplicate_of" not in t.user_attrs]


def pareto_report(run: Run) -> dict:
    from archsearch.fidelity.in_study import reference_of, study_reference

    trials = completed(run)
    ref, note = reference_point(run, trials)
    best = pareto_trials(run) if trials else []
    states = {s.name: 0 for s in TrialState}
    for t in run.study.get_trials(deepcopy=False):
        states[t.state.name] += 1
    return {
        "study": run.cfg["name"], "objectives": run.names, "directions": run.directions,
        "reference_point": dict(zip(run.names, ref)), "reference_point_note": note,
        "hypervolume": hypervolume(best, ref, run.directions),
        "hypervolume_definition": "fraction of the box [0, ref] dominated, objectives scaled v/ref (min) or ref/v (max)",
        "trials": {k: v for k, v in states.items() if v},
        "pareto": [{"number": t.number, "values": dict(zip(run.names, t.values)),
                    "metrics": t.user_attrs.get("metrics", {}), "params": t.params,
                    "proxy_metric": t.user_attrs.get("proxy_metric"), "spec": t.user_attrs.get("spec"),
                    "seeds": t.user_attrs.get("quality_seeds"), "reference": reference_of(run, t)}
                   for t in best],
        "fidelity": (study_reference(run) or [None])[0],  # the study's fidelity: experiment (in_study.py)
    }


def print_pareto(rep: dict, file=None) -> None:
    from archsearch.study.seeds import quality_cell

    names = rep["objectives"]
    refs = sorted({k for p in rep["pareto"] for k in p.get("reference") or {}})  # ref_<metric> (fidelity:)
    w = [max(12, len(n) + 2) for n in names + refs]
    print(f"Pareto front of {rep['study']}: {len(rep['pareto'])} non-dominated trial(s) "
          f"({', '.join(f'{k.lower()} {v}' for k, v in rep['trials'].items())})", file=file)
    print("  trial  " + "".join(f"{n:>{wi}}" for n, wi in zip(names + refs, w)), file=file)
    for p in rep["pareto"]:
        cells = [quality_cell(p, n) or fmt_metric(n, p["values"][n]) for n in names]
        cells += [fmt_metric(n, (p.get("reference") or {}).get(n)) for n in refs]
        print(f"  {p['number']:>5}  " + "".join(f"{c:>{wi}}" for c, wi in zip(cells, w)), file=file)
    if any(p.get("seeds") for p in rep["pareto"]):
        print("quality: mean±standard error over the seeds; the front keeps every trial not beaten by more than "
              "1.96 standard errors (docs/study.md)", file=file)
    if rep.get("fidelity"):
        print(f"reference values: {rep['fidelity']['reference']} (mean over the seeds; the study's fidelity: "
              "section)", file=file)
    ref = ", ".join(f"{n}={fmt_metric(n, v)}" for n, v in rep["reference_point"].items())
    print(f"hypervolume {rep['hypervolume']:.4f} (fraction of the box up to the reference point {ref}; "
          f"{rep['reference_point_note']})", file=file)


def dumps(rep: dict) -> str:
    return json.dumps(rep, indent=2, default=str)
