"""A study's ``fidelity:`` section: the final front re-evaluated at a higher fidelity when the run ends.

When ``archsearch run`` has its ``n_trials`` (or its timeout), and before it writes ``pareto.json``
and the dashboard, the run's final Pareto front — plus ``k`` other completed architectures
stratified by proxy quality, at least 2 in all (a rank correlation needs two) — is measured by
:func:`archsearch.fidelity.measure.plan` / :func:`~archsearch.fidelity.measure.execute`, the code of
``archsearch fidelity RUN_DIR --k K --budget-mult M --seeds S [overrides]``: the same evaluations log
(resumable after kill -9; a re-run of the finished study evaluates nothing again), the same report
and scatter in ``RUN_DIR/fidelity/<hash>/``. This time is spent after the trials, outside the
study's ``timeout``.

``RUN_DIR/fidelity/study.json`` then names that experiment as the study's own. The reference values
(``ref_<metric>``: the mean over the reference seeds, ``<metric>`` being what the reference measured,
e.g. ``ref_fd-fmnist``) are read from there — never written into the finished Optuna trials — by
``archsearch pareto`` (a column), the dashboard (the report's section) and ``archsearch promote
--pick`` (a metric of the trials that have one; the others are not candidates for a rule on it).
Every trial of a re-evaluated architecture has its value (repeats included).
"""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

from snapgen.cache import atomic_write_json
from snapgen.errors import UserError

POINTER = "study.json"  # RUN_DIR/fidelity/study.json
PREFIX = "ref_"


def overrides_list(overrides: dict, prefix: str = "") -> list[str]:
    """``{classifier: {steps: 300}, num_samples: 1000}`` -> ``["classifier.steps=300", "num_samples=1000"]``
    (the ``key=value`` form of ``archsearch fidelity``; values as JSON, which is YAML)."""
    out = []
    for k, v in overrides.items():
        if isinstance(v, dict) and v:
            out += overrides_list(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}={json.dumps(v)}")
    return out


def validate_section(study) -> None:
    """Every value of ``fidelity:`` checked when the study is loaded (one line naming the key, exit 2)."""
    from archsearch.fidelity.evaluate import quality_metric, reference_side

    fc, f = study.cfg.fidelity, str(study.file)
    checks = (("budget_mult", fc.budget_mult >= 1, "must be >= 1 (the reference trains at least as long as the proxy)"),
              ("seeds", fc.seeds >= 1, "must be >= 1 (reference seeds)"),
              ("k", fc.k >= 0, "must be >= 0 (extra architectures beside the front)"),
              ("workers", fc.workers is None or fc.workers >= 1, "must be >= 1 (worker processes), or absent"))
    for key, ok, msg in checks:
        if not ok:
            raise UserError(f"{msg}, got {getattr(fc, key)!r}", file=f, key=f"fidelity.{key}")
    try:
        quality_metric(study)
        reference_side(study, (0,), budget_mult=fc.budget_mult, overrides=overrides_list(fc.overrides))
    except UserError as e:
        where = f"{e.key}: " if e.key else ""
        raise UserError(f"{where}{e.message}", file=f, key="fidelity.overrides" if fc.overrides else "fidelity") \
            from None


def evaluate_front(study, *, workers: int, progress: bool) -> dict:
    """Measure the study's final front at the section's fidelity; returns the report."""
    from archsearch.fidelity.measure import execute, plan
    from archsearch.study.pareto import load_run, pareto_trials

    fc = study.cfg.fidelity
    run_dir = study.output_dir
    front = {t.user_attrs.get("spec_hash") for t in pareto_trials(load_run(run_dir))}
    k = max(2, len(front) + fc.k)
    try:
        pl = plan(str(run_dir), k=k, budget_mult=fc.budget_mult, seeds=fc.seeds,
                  overrides=overrides_list(fc.overrides))
    except UserError as e:
        raise UserError(f"cannot re-evaluate the front: {e.line()}", file=str(study.file), key="fidelity") from None
    print(f"fidelity: the final front ({len(front)} architecture(s)) and {pl.source['selection']['k'] - len(front)} "
          f"other(s) at {pl.reference.describe()}", file=sys.stderr, flush=True)
    rep = execute(pl, workers=fc.workers or workers, progress=progress)
    # what the reference measured (e.g. fd-fmnist): its evaluations say; the report has >= 2 of them
    metric = next(r["metric"] for r in pl.log.read().values() if r.get("settings") == pl.reference.key
                  and "value" in r)
    atomic_write_json(pl.root / POINTER, {"report": str(pl.dir.relative_to(pl.root) / "report.json"),
                                          "metric": metric, "reference": pl.reference.describe()})
    return rep


@functools.lru_cache(maxsize=8)
def _load(pointer: str, stamp: tuple) -> tuple[dict, dict]:
    ptr = json.loads(Path(pointer).read_text())
    rep = json.loads((Path(pointer).parent / ptr["report"]).read_text())
    return ptr, rep


def study_reference(run) -> tuple[dict, dict] | None:
    """(pointer, report) of the run's own fidelity experiment, or None if it has none."""
    p = Path(run.dir) / "fidelity" / POINTER
    if not p.is_file():
        return None
    ptr = json.loads(p.read_text())
    r = p.parent / ptr["report"]
    if not r.is_file():
        raise UserError(f"names {ptr['report']}, which is missing; re-run `archsearch run` to measure it again",
                        file=str(p))
    return _load(str(p), (p.stat().st_mtime_ns, r.stat().st_mtime_ns))


def reference_of(run, t) -> dict[str, float]:
    """``{"ref_<metric>": mean over the reference seeds}`` of trial ``t`` if its architecture (spec hash)
    was re-evaluated by the study's fidelity experiment, else ``{}``."""
    found = study_reference(run)
    if found is None:
        return {}
    ptr, rep = found
    for a in rep["architectures"]:
        if a["spec_hash"] == t.user_attrs.get("spec_hash") and a["reference"]["mean"] is not None:
            return {PREFIX + ptr["metric"]: float(a["reference"]["mean"])}
    return {}


def check_rule_names(names, candidate_metrics: list[dict], run) -> str:
    """For ``promote --pick``: a ``ref_*`` name that no candidate has is an error saying why; for a rule on
    one, returns the note added when nothing satisfies it (how many candidates have reference values)."""
    refs = [n for n in names if n.startswith(PREFIX)]
    if not refs:
        return ""
    for n in refs:
        if not any(n in m for m in candidate_metrics):
            found = study_reference(run)
            why = (f"this run's reference values are {PREFIX + found[0]['metric']}" if found else
                   "this run has none (a study with a fidelity: section records them when `archsearch run` ends)")
            raise UserError(f"no trial has a reference value {n!r}: {why}; trials without one are not candidates "
                            "for a rule on it", key="--pick")
    n_ref = sum(1 for m in candidate_metrics if all(n in m for n in refs))
    return f"; only the {n_ref} with reference values {', '.join(refs)} are candidates"
