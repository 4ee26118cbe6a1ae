"""Plan and run a fidelity measurement: which evaluations, in which processes, resumed how.

:func:`plan` checks everything (source, architectures, both sides' settings, the resolution, that
every architecture can be built at both proxy sizes) and writes nothing. :func:`execute` writes
``settings.json``, runs the evaluations the log does not hold yet — in this process for one worker,
else in a pool of ``workers`` processes (``spawn``: each trains a model, as ``archsearch run
--workers`` does; this process is the only writer of the log) — then the report.

Resumption: each finished evaluation is one line of ``fidelity/evaluations.jsonl`` (see
:mod:`.store`), keyed by (spec hash, seed, settings hash), so a re-run after kill -9 evaluates only
what is missing, and another measurement with other K or other architectures reuses what it shares.
A pool worker whose parent died runs nothing more (it checks its parent before each evaluation).
An evaluation whose training failed (``TrainingError``: non-finite loss...) is logged as failed, not
retried, and its architecture left out of the report, which says so.
"""
from __future__ import annotations

import datetime
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from snapgen.cache import atomic_write_json, hash_config
from snapgen.errors import TrainingError, UserError

from archsearch.fidelity.evaluate import CLI, Side, _runner, proxy_side, quality_metric, quality_value, reference_side
from archsearch.fidelity.store import EvaluationLog, evaluation_key


@dataclass(frozen=True)
class Job:
    key: str
    index: int  # into plan.cands
    side: str  # proxy | reference
    seed: int


@dataclass
class Plan:
    study: object
    source: dict
    cands: list
    quality: str
    proxy: Side
    reference: Side
    root: Path  # <run>/fidelity
    jobs: list[Job] = field(default_factory=list)

    @property
    def dir(self) -> Path:
        h = hash_config({"source": self.source["kind"], "archs": [c.spec_hash for c in self.cands],
                         "proxy": [self.proxy.key, self.proxy.seeds], "reference": [self.reference.key,
                                                                                     self.reference.seeds]})[:12]
        return self.root / h

    @property
    def log(self) -> EvaluationLog:
        return EvaluationLog(self.root / "evaluations.jsonl")

    def side(self, name: str) -> Side:
        return self.proxy if name == "proxy" else self.reference


# ---- the study behind a run -----------------------------------------------------------------------
def _find_space(run_dir: Path, space: str, name: str) -> Path:
    """The run's study.yaml names its space relative to the original study file; that file is recorded
    in provenance.jsonl (as given on its command line, relative to where it ran), and it must still be
    a study of the same name."""
    import json

    import yaml

    def same_study(f: Path) -> bool:
        try:
            return f.is_file() and (yaml.safe_load(f.read_text()) or {}).get("name") == name
        except (OSError, yaml.YAMLError, AttributeError):
            return False

    p = Path(space).expanduser()
    if p.is_absolute():
        return p
    tried = []
    prov = run_dir / "provenance.jsonl"
    if prov.is_file():
        for line in reversed(prov.read_text().splitlines()):
            try:
                f = Path(json.loads(line).get("study_file") or "")
            except (json.JSONDecodeError, AttributeError):
                continue
            bases = [f] if f.is_absolute() else [Path.cwd() / f, run_dir.parent / f, run_dir.parent.parent / f]
            for b in bases:
                cand = (b.parent / p).resolve()
                tried.append(str(cand))
                if cand.is_file() and same_study(b):
                    return cand
    raise UserError(f"cannot find the search space {space!r} of this run (it is relative to the study file; tried "
                    f"{', '.join(tried) or 'no recorded study file'}); run from where the study was run",
                    file=str(run_dir / "study.yaml"), key="space")


def study_of_run(run_dir: Path):
    """A :class:`~archsearch.study.schema.Study` from a run's resolved study.yaml (the settings the run
    used, whatever its study file says now); its outputs go to ``run_dir``."""
    import yaml

    from archsearch.objectives import metrics_for
    from archsearch.space import SearchSpace
    from archsearch.study.schema import Study, StudyCfg, parse_constraint, to_structured

    f = run_dir / "study.yaml"
    if not f.is_file():
        raise UserError("not a run directory (no study.yaml); give the output_dir of `archsearch run`, a study "
                        "file or --presets", file=str(run_dir))
    data = yaml.safe_load(f.read_text())
    cfg = to_structured(data, StudyCfg, file=str(f))
    cfg.output_dir = str(run_dir)
    space = SearchSpace.load(_find_space(run_dir, cfg.space, cfg.name))
    metrics = metrics_for(space.kind)
    cons = [parse_constraint(c, file=str(f), key=f"constraints[{i}]", metrics=metrics)
            for i, c in enumerate(cfg.constraints)]
    return Study(cfg=cfg, file=f, space=space, objectives=list(cfg.objectives), constraints=cons, overrides=[])


# ---- planning (nothing is written) ----------------------------------------------------------------
DEFAULT_STUDY = Path(__file__).resolve().parents[2] / "studies" / "unet.yaml"


def plan(source: str | None, *, presets: str | None = None, k: int = 12, budget_mult: float = 4.0, seeds: int = 2,
         proxy_seeds: int | None = None, resolution: int | None = None, overrides=(), select_seed: int = 0) -> Plan:
    from archsearch.fidelity.select import from_presets, from_run
    from archsearch.space import InvalidArchitecture
    from archsearch.study.schema import load_study

    for name, v, lo in (("--k", k, 2), ("--seeds", seeds, 1), ("--proxy-seeds", proxy_seeds, 1)):
        if v is not None and v < lo:
            raise UserError(f"must be >= {lo}, got {v}", file=CLI, key=name)
    if not budget_mult >= 1:
        raise UserError(f"must be >= 1 (the reference trains at least as long as the proxy), got {budget_mult:g}",
                        file=CLI, key="--budget-mult")
    if resolution is not None and resolution < 1:
        raise UserError(f"must be a positive number of pixels, got {resolution}", file=CLI, key="--resolution")
    run_dir = None
    if source is None:
        if not presets:
            raise UserError("give a run directory, a study file, or --presets", file=CLI)
        study = load_study(DEFAULT_STUDY)
    else:
        p = Path(source)
        if p.is_dir():
            run_dir = p
        elif p.is_file():
            study = load_study(p)
            if not presets:
                run_dir = study.output_dir
                if not (run_dir / "study.yaml").is_file():
                    raise UserError(f"no run of this study at {run_dir} (its output_dir); run it first or give "
                                    "--presets", file=str(p), key="output_dir")
        else:
            raise UserError("no such run directory or study file", file=str(source))
        if run_dir is not None:
            study = study_of_run(run_dir)
    quality = quality_metric(study)
    s0 = int(study.cfg.seed)
    ref_seeds = tuple(s0 + i for i in range(seeds))
    if presets:
        cands = from_presets(study, [x.strip() for x in presets.split(",") if x.strip()])
        root = (run_dir or study.output_dir) / "fidelity"
        n_proxy = proxy_seeds or seeds
        source_info = {"kind": "presets", "presets": [c.label for c in cands], "run_dir": str(run_dir or study.output_dir),
                       "study_file": str(study.file)}
    else:
        from archsearch.study.pareto import load_run

        run = load_run(run_dir)
        cands, note = from_run(run, study, quality, k, select_seed)
        root = run_dir / "fidelity"
        n_proxy = proxy_seeds or int(study.cfg.seeds)  # default: the seeds the run holds
        source_info = {"kind": "run", "run_dir": str(run_dir), "selection": note, "run_seeds": int(study.cfg.seeds)}
    proxy = proxy_side(study, tuple(s0 + i for i in range(n_proxy)))
    reference = reference_side(study, ref_seeds, budget_mult=budget_mult, resolution=resolution,
                               overrides=list(overrides), specs=[c.spec for c in cands])
    source_info.update(budget_mult=budget_mult, resolution=resolution, overrides=list(overrides))
    # Every architecture must be buildable at both sides' proxy size, and presets need their exact metrics.
    for side in (proxy, reference):
        runner = _runner(study, s0, side.quality)
        for c in cands:
            try:
                runner.check_proxy_size(c.spec)
            except InvalidArchitecture as e:
                raise UserError(f"{c.label} cannot be evaluated by the {side.name}: {e.line()}", file=CLI,
                                key="--presets" if presets else None) from None
            if side.name == "proxy" and presets:
                c.metrics, c.missing = _exact_metrics(study, runner, c.spec, quality)
    pl = Plan(study=study, source=source_info, cands=cands, quality=quality, proxy=proxy, reference=reference,
              root=root)
    seen: set[str] = set()
    for side in (proxy, reference):
        for seed in side.seeds:  # seed-major: an interrupted measurement has whole seeds first
            for i, c in enumerate(cands):
                if side.name == "proxy" and seed in c.run_values:
                    continue  # the run holds this value
                key = evaluation_key(c.spec_hash, seed, side.key)
                if key not in seen:  # --budget-mult 1 without overrides: both sides are the same settings
                    seen.add(key)
                    pl.jobs.append(Job(key, i, side.name, seed))
    return pl


def _exact_metrics(study, runner, spec, quality) -> tuple[dict, str | None]:
    """The cost and latency metrics a trial of this study records for ``spec`` (not the quality), and why
    the latency is missing where the study's latency model cannot give it (a preset outside the space its
    table was calibrated for): the report then has no fronts, and says why."""
    import warnings

    needed = [m for m in study.needed_metrics() if m != quality]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = runner.cost(spec)
    if any(n.endswith("latency_ms") for n in needed):
        try:
            m.update(runner.latency.metrics(spec, study.space.kind, needed))
        except UserError as e:
            return m, e.line()
    return m, None


# ---- execution ------------------------------------------------------------------------------------
def _evaluate(study, spec, seed: int, quality: dict, parent_pid: int | None, workers: int) -> dict | None:
    """One evaluation (in a pool worker or in this process); None if the parent died meanwhile."""
    if parent_pid is not None and os.getppid() != parent_pid:
        return None
    t0 = time.perf_counter()
    try:
        res = quality_value(study, spec, seed, quality, workers=workers)
    except TrainingError as e:
        return {"failed": e.line(), "seconds": time.perf_counter() - t0}
    return {"value": float(res.value), "metric": res.metric, "steps": int(res.steps),
            "seconds": time.perf_counter() - t0}


def _record(plan: Plan, job: Job, out: dict) -> dict:
    from archsearch.study.provenance import code_version

    c = plan.cands[job.index]
    return {"key": job.key, "spec_hash": c.spec_hash, "seed": job.seed, "settings": plan.side(job.side).key,
            "side": job.side, "label": c.label, **out, "pid": os.getpid(),
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "code_version": code_version()["describe"]}


def execute(plan: Plan, *, workers: int = 1, progress: bool = True, n_resamples: int = 2000) -> dict:
    from snapgen.progress import progress as progress_bar

    from archsearch.fidelity.report import write_html

    plan.dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(plan.dir / "settings.json", {
        "source": plan.source, "metric": plan.quality,
        "architectures": [{"label": c.label, "spec_hash": c.spec_hash, "trial": c.trial} for c in plan.cands],
        "sides": {s.name: {"settings_key": s.key, "seeds": list(s.seeds), "quality": s.quality, "settings": s.resolved}
                  for s in (plan.proxy, plan.reference)}})
    log = plan.log
    done = log.read()
    pending = [j for j in plan.jobs if j.key not in done]
    say = (lambda s: print(s, file=sys.stderr, flush=True))
    say(f"fidelity: {len(plan.jobs)} evaluations ({len(plan.jobs) - len(pending)} already in {log.path}), "
        f"{min(workers, max(1, len(pending)))} worker(s)")
    bar = progress_bar(total=len(plan.jobs), initial=len(plan.jobs) - len(pending), desc="fidelity", unit="eval",
               file=sys.stderr, disable=not progress, dynamic_ncols=True)

    def finish(job, out):
        rec = _record(plan, job, out)
        log.append(rec)
        done[job.key] = rec
        bar.update(1)
        what = f"{rec['value']:.4g}" if "value" in rec else f"FAILED {rec['failed']}"
        (bar.write if progress else say)(f"[{job.side} seed {job.seed}] {rec['label']}: {plan.quality}={what} "
                                         f"({rec['seconds']:.0f} s)")

    try:
        if workers <= 1 or len(pending) <= 1:
            for job in pending:
                side = plan.side(job.side)
                finish(job, _evaluate(plan.study, plan.cands[job.index].spec, job.seed, side.quality, None, 1))
        else:
            _pool(plan, pending, workers, finish)
    finally:
        bar.close()
    rep = report(plan, done, n_resamples=n_resamples)
    atomic_write_json(plan.dir / "report.json", rep)
    write_html(rep, plan.dir / "fidelity.html")
    return rep


def _pool(plan: Plan, pending: list[Job], workers: int, finish) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ex = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        futs = {ex.submit(_evaluate, plan.study, plan.cands[j.index].spec, j.seed, plan.side(j.side).quality,
                          os.getpid(), workers): j for j in pending}
        for fut in as_completed(futs):
            out = fut.result()
            if out is not None:
                finish(futs[fut], out)
    except BaseException:
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    ex.shutdown(wait=True)


def report(plan: Plan, done: dict, *, n_resamples: int = 2000) -> dict:
    from archsearch.fidelity.report import build_report

    keep, pvals, rvals, excluded = [], [], [], []
    secs = {"proxy": [], "reference": []}
    for i, c in enumerate(plan.cands):
        pv, rv, failed = {}, {}, []
        for side, vals in ((plan.proxy, pv), (plan.reference, rv)):
            for seed in side.seeds:
                if side.name == "proxy" and seed in c.run_values:
                    vals[seed] = c.run_values[seed]
                    if c.run_seconds is not None:  # the trial's quality time, over the seeds it ran
                        secs["proxy"].append(c.run_seconds / len(c.run_values))
                    continue
                rec = done.get(evaluation_key(c.spec_hash, seed, side.key))
                if rec is None:
                    raise UserError(f"evaluation missing from the log: {c.label} {side.name} seed {seed}")
                if "failed" in rec:
                    failed.append(f"{side.name} seed {seed}: {rec['failed']}")
                    continue
                vals[seed] = rec["value"]
                secs[side.name].append(rec["seconds"])
        if failed:
            excluded.append({"label": c.label, "failed": failed})
            continue
        keep.append(c)
        pvals.append(pv)
        rvals.append(rv)
    if len(keep) < 2:
        raise UserError(f"only {len(keep)} architecture(s) evaluated without a training failure; see {plan.log.path}")
    seconds = {k: (sum(v) / len(v) if v else None) for k, v in secs.items()}
    rep = build_report(study=plan.study, source=plan.source, cands=keep, quality=plan.quality, proxy_side=plan.proxy,
                       reference_side=plan.reference, proxy_values=pvals, reference_values=rvals, seconds=seconds,
                       n_resamples=n_resamples)
    rep["excluded"] = excluded
    rep["files"] = {"dir": str(plan.dir), "evaluations": str(plan.log.path)}
    return rep
