"""``archsearch run``: one Optuna study, many trials, any number of workers.

Each worker is an ask/tell loop over one shared Optuna storage (SQLite file, PostgreSQL/MySQL URL or
journal file). Optuna's ``optimize`` is not used because the loop needs three things it lacks:
an exact trial budget across workers (the count-then-ask step runs under
:func:`~archsearch.study.storage.budget_lock`), immediate recovery of trials whose local worker
died (:func:`~archsearch.study.storage.fail_orphans`, beside Optuna's heartbeat for other hosts),
and early stopping of multi-objective trials (:mod:`archsearch.study.early_stopping`). The
heartbeat, the retry of stale trials and every record are Optuna's own.

A trial: sample the spec (an invalid one is PRUNED with its reason) -> cost of the full-size
architecture at the target resolution -> latency -> proxy quality of the proxy-scaled model (with
early stopping) -> constraints (``trial.set_constraint``) -> tell. A retried or re-run study picks
up where it was: counted trials are COMPLETE, PRUNED and failed-with-a-reason ones; a killed
trial is failed and re-queued with the same parameters.
"""
from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from snapgen.errors import UserError
from archsearch.space import InvalidArchitecture, at_proxy_size
from archsearch.study import provenance
from archsearch.study.storage import (Heartbeat, budget_lock, fail_orphans, id_of, named_constraints, open_storage,
                                      report_intermediate, set_constraints, worker_identity)

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)
MAX_CONSECUTIVE_FAILURES = 3


MAX_FREE_PER_TRIAL = 10  # at most this many uncounted (invalid or repeated) samples per counted trial


def is_free(t) -> bool:
    """Samples that cost nothing and do not use up the budget: an architecture that cannot be built
    (PRUNED in a second) or one already evaluated (values reused)."""
    return "invalid" in t.user_attrs or "duplicate_of" in t.user_attrs


def is_counted(t) -> bool:
    """Trials that use up the budget (``n_trials`` = architectures evaluated): finished ones and failures
    with a reason; not invalid or repeated samples, not stale/killed trials (they are re-run)."""
    if is_free(t):
        return False
    return t.state in COUNTED or (t.state == TrialState.FAIL and "fail_reason" in t.user_attrs)


def create_or_load(study, storage, sampler=None) -> optuna.Study:
    """The Optuna study of ``study`` in ``storage``; refuses one made with other objectives."""
    from archsearch.study.samplers import make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = sampler or make_sampler(study.cfg.sampler, study.space)
    names = study.objective_names
    try:
        existing = optuna.load_study(study_name=study.name, storage=storage, sampler=sampler)
    except KeyError:
        existing = None
    if existing is not None:
        old = existing.user_attrs.get("objectives")
        olddirs = [d.name.lower() for d in existing.directions]
        if (old is not None and old != names) or olddirs != study.directions:
            raise UserError(f"study {study.name!r} in this storage has objectives {old} ({', '.join(olddirs)}), "
                            f"not {names} ({', '.join(study.directions)}); change name or output_dir",
                            file=str(study.file), key="objectives")
        return existing
    s = optuna.create_study(study_name=study.name, storage=storage, sampler=sampler, directions=study.directions,
                            load_if_exists=True)
    s.set_metric_names(names)  # optuna-dashboard shows these names
    s.set_user_attr("objectives", names)
    return s


class TrialRunner:
    """Evaluates one trial: everything between ``ask`` and ``tell``."""

    def __init__(self, study, ostudy: optuna.Study, *, workers: int = 1, log=print):
        from archsearch.objectives import METRICS
        from archsearch.study.early_stopping import SuccessiveHalving

        self.study, self.ostudy, self.cfg, self.log = study, ostudy, study.cfg, log
        self.kind = study.space.kind
        self.needed = study.needed_metrics()
        self.quality = next((m for m in self.needed if METRICS[m].kind == "quality"), None)
        self.metric = METRICS.get(self.quality)
        self.out_dir = study.output_dir
        self._latency = None
        # Threads: the evaluation's own default (1) unless the study sets proxy.threads; on a shared CPU
        # one thread per worker process is robust (see docs/proxy.md), and workers use the cores.
        self.proxy_cfg = self.metric.config(self.cfg, str(study.file), sys.stderr.isatty() and workers == 1) \
            if self.metric and self.metric.config else None
        self.proxy_of = self.metric.proxy(self.proxy_cfg) if self.proxy_cfg and self.metric.proxy else None
        es = self.cfg.early_stopping
        self.stopper = None
        if es.enabled and self.quality and self.quality in study.objective_names:
            self.stopper = SuccessiveHalving(study.objective_names, study.directions, self.quality, eta=es.eta,
                                             min_trials=es.min_trials, constraints=study.constraints,
                                             reference=dict(self.cfg.reference_point))

    @property
    def latency(self):
        if self._latency is None:
            from archsearch.objectives.latency import LatencyObjective

            self._latency = LatencyObjective(self.cfg.latency, self.cfg.target, self.study.space)
        return self._latency

    # ---- metrics -----------------------------------------------------------------------------
    def cost(self, spec) -> dict:
        from archsearch.objectives.cost import cost_metrics

        return cost_metrics(spec, self.cfg.target.latent_size, self.cfg.target.context_len)

    def run_quality(self, spec, metrics, on_eval):
        return self.metric.run(spec, self.proxy_cfg, self.cfg, seed=self.cfg.seed, params=metrics.get("params"),
                               on_eval=on_eval)

    def check_proxy_size(self, spec) -> None:
        """A full-size architecture whose proxy cannot be built cannot be scored: invalid for this study.
        (The space does not sample one; a spec given by hand is checked here.)"""
        at_proxy_size(spec, self.proxy_of)

    # ---- one trial ---------------------------------------------------------------------------
    def record(self, trial, state, spec=None, **extra) -> None:
        t = trial.storage.get_trial(id_of(trial))
        rec = {"number": trial.number, "state": state, "params": t.params, "seed": self.cfg.seed,
               "user_attrs": t.user_attrs, "constraints": named_constraints(t),
               "proxy_config": dataclasses.asdict(self.proxy_cfg) if self.proxy_cfg else None,
               "target": dataclasses.asdict(self.cfg.target), "study": self.study.name,
               "code_version": provenance.code_version(), **extra}
        if spec is not None:
            rec["spec"] = spec.to_dict()
        provenance.write_trial(self.out_dir, trial.number, rec, spec)

    def _evaluated_twin(self, trial, sh: str, poll_s: float = 1.0):
        """A COMPLETE trial of the same architecture, if any. Workers on one storage can sample the
        same architecture at once: registering the spec hash and looking for twins happen under the
        study's budget lock, so exactly one of them evaluates it and the later ones wait for it (they
        never wait on each other) and then reuse its values."""
        with budget_lock(self.study.cfg.storage, self.study.name):
            trial.set_user_attr("spec_hash", sh)
            trials = self.ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
            twins = [t for t in trials if t.user_attrs.get("spec_hash") == sh and t.number != trial.number]
        wait_for = {t.number for t in twins if t.state == TrialState.RUNNING}
        while True:
            done = next((t for t in twins if t.state == TrialState.COMPLETE), None)
            if done is not None or not wait_for:
                return done
            time.sleep(poll_s)
            trials = self.ostudy.get_trials(deepcopy=False)
            twins = [t for t in trials if t.user_attrs.get("spec_hash") == sh and t.number != trial.number]
            wait_for = {t.number for t in twins if t.number in wait_for and t.state == TrialState.RUNNING}

    def run(self, trial: optuna.Trial) -> tuple[TrialState, list[float] | None, str]:
        """Evaluate and tell; returns (state, values, one-line summary)."""
        timings = {}
        t_start = time.perf_counter()
        try:
            spec = self.study.space.sample(trial, self.proxy_of)
        except InvalidArchitecture as e:
            reason = f"invalid architecture: {e.line()}"
            trial.set_user_attr("pruned_reason", reason)
            trial.set_user_attr("invalid", True)
            self.ostudy.tell(trial, state=TrialState.PRUNED)
            self.record(trial, "PRUNED")
            return TrialState.PRUNED, None, reason
        sh = spec.key()
        trial.set_user_attr("spec", spec.to_dict())
        dup = self._evaluated_twin(trial, sh)
        if dup is not None:
            # The same architecture again (samplers repeat themselves on small spaces): every metric is a
            # deterministic function of the spec and the seed, so reuse it instead of training again.
            for k in ("metrics", "evals", "proxy_metric", "quality_seeds"):
                if k in dup.user_attrs:
                    trial.set_user_attr(k, dup.user_attrs[k])
            trial.set_user_attr("duplicate_of", dup.number)
            set_constraints(trial, named_constraints(dup))
            for step, v in sorted(dup.intermediate_values.items()):
                report_intermediate(trial, step, v)
            self.ostudy.tell(trial, dup.values)
            self.record(trial, "COMPLETE", spec, metrics=dup.user_attrs.get("metrics", {}),
                        timings={"total_s": time.perf_counter() - t_start})
            return TrialState.COMPLETE, dup.values, f"same architecture as trial {dup.number}"
        self.record(trial, "RUNNING", spec)

        metrics: dict = {}
        t0 = time.perf_counter()
        metrics.update(self.cost(spec))
        timings["cost_s"] = time.perf_counter() - t0
        if any(m.endswith("latency_ms") for m in self.needed):
            t0 = time.perf_counter()
            metrics.update(self.latency.metrics(spec, self.kind, self.needed))
            timings["latency_s"] = time.perf_counter() - t0
        trial.set_user_attr("metrics", metrics)

        result, decision = None, None
        if self.quality:
            evals: list[list] = []

            def on_eval(step: int, value: float) -> bool:
                nonlocal decision
                evals.append([int(step), float(value)])
                trial.set_user_attr("evals", evals)
                planned = getattr(self.proxy_cfg, "steps", None)
                if self.stopper is None or (planned is not None and step >= planned):
                    return False
                d = self.stopper.decide(self.ostudy, trial.number, int(step), float(value), metrics)
                if d.stop:
                    decision = d
                return d.stop

            t0 = time.perf_counter()
            from archsearch.study.seeds import run_quality as over_seeds

            result = over_seeds(self, spec, metrics, on_eval, trial)  # run_quality over the study's seeds
            timings["quality_s"] = time.perf_counter() - t0
            metrics[self.quality] = float(result.value)
            trial.set_user_attr("proxy_metric", result.metric)
            trial.set_user_attr("metrics", metrics)
            trial.set_user_attr("proxy_steps", int(result.steps))
        timings["total_s"] = time.perf_counter() - t_start
        trial.set_user_attr("timings", timings)
        set_constraints(trial, {str(c): c.violation(metrics[c.metric]) for c in self.study.constraints})
        proxy = result.to_dict() if result is not None else None
        if proxy is not None:
            proxy.pop("spec", None)
        if decision is not None:
            trial.set_user_attr("pruned_reason", decision.reason)
            trial.set_user_attr("early_stopped", {"step": int(result.steps), "value": float(result.value)})
            self.ostudy.tell(trial, state=TrialState.PRUNED)
            self.record(trial, "PRUNED", spec, metrics=metrics, timings=timings, proxy_result=proxy)
            return TrialState.PRUNED, None, decision.reason
        values = [metrics[n] for n in self.study.objective_names]
        for step, v in trial.user_attrs.get("evals", []):  # learning curves, for trials that complete only
            report_intermediate(trial, step, v)
        self.ostudy.tell(trial, values)
        self.record(trial, "COMPLETE", spec, metrics=metrics, timings=timings, proxy_result=proxy)
        return TrialState.COMPLETE, values, ""


def format_values(study, values) -> str:
    from archsearch.study.pareto import fmt_metric

    return "  ".join(f"{n}={fmt_metric(n, v)}" for n, v in zip(study.objective_names, values))


def _worker_device(runner) -> str | None:
    """Where this worker's trials train (the proxy's resolved device, as the user names it)."""
    name = getattr(runner.proxy_cfg, "device", None)
    if name is None:
        return None  # the quality metric trains nothing
    from snapgen.train.device import describe, resolve_device

    return describe(resolve_device(name))


def run_worker(study, *, workers: int = 1, progress: bool = True, deadline: float | None = None) -> dict:
    """One worker's ask/tell loop until the study has ``n_trials`` counted trials (or the timeout).

    A trial that fails is FAILED with its reason and the worker goes on; the study stops after
    ``MAX_CONSECUTIVE_FAILURES`` failures in a row (a systematic problem), except that a trial that
    runs out of device memory is a property of its architecture, not of the study: it is FAILED
    with the reason (``out of memory at batch 64 on cuda:1``), its memory is released, and it does
    not count towards that rule."""
    from snapgen.progress import progress as progress_bar

    from snapgen.train.device import OutOfMemory, release_memory

    cfg = study.cfg
    storage = open_storage(cfg.storage, heartbeat_interval=cfg.heartbeat.interval,
                           grace_period=cfg.heartbeat.grace_period, max_retry=cfg.heartbeat.max_retry)
    ostudy = create_or_load(study, storage)
    n = cfg.n_trials
    bar = progress_bar(total=n, desc=f"study {study.name}", unit="trial", file=sys.stderr, disable=not progress,
                       dynamic_ncols=True)
    log = bar.write if progress else (lambda s: print(s, file=sys.stderr, flush=True))
    runner = TrialRunner(study, ostudy, workers=workers, log=log)
    device = _worker_device(runner)
    ran = failures = 0
    poll = min(5.0, max(0.5, cfg.heartbeat.interval / 2))
    try:
        while True:
            if deadline is not None and time.time() > deadline:
                log(f"timeout reached: no new trial starts ({cfg.timeout:g} s)")
                break
            with budget_lock(cfg.storage, study.name):
                for num in fail_orphans(storage, ostudy, cfg.heartbeat.max_retry):
                    log(f"[trial {num}] its worker died: marked FAIL, re-queued")
                trials = ostudy.get_trials(deepcopy=False)
                done = sum(map(is_counted, trials))
                running = sum(t.state == TrialState.RUNNING for t in trials)
                bar.n = min(done, n)
                bar.refresh()
                if done >= n:
                    break
                free = sum(map(is_free, trials))
                if free > MAX_FREE_PER_TRIAL * n:
                    raise UserError(f"{free} samples were invalid or repeated architectures for {done} evaluated ones; "
                                    "the space is too constrained or exhausted", file=str(study.file), key="space")
                trial = None
                if done + running < n:
                    trial = ostudy.ask()
                    trial.set_user_attr("worker", worker_identity())
            if trial is None:  # the budget is taken by trials running elsewhere: wait for them
                time.sleep(poll)
                continue
            t0 = time.perf_counter()
            tid = id_of(trial)
            retried = storage.get_trial_system_attrs(tid).get("failed_trial")
            if device is not None:
                trial.set_user_attr("device", device)
            oom = False
            try:
                with Heartbeat(storage, tid):
                    state, values, note = runner.run(trial)
            except KeyboardInterrupt:
                _requeue(ostudy, trial, "interrupted")
                raise
            except OutOfMemory as e:  # raised by the engine with the batch and the device
                state, values, note = _fail(ostudy, trial, runner, e.line())
                oom = True
            except torch.OutOfMemoryError as e:  # outside a training run (e.g. a latency measurement)
                state, values, note = _fail(ostudy, trial, runner,
                                            f"out of memory on {device}: {str(e).splitlines()[0][:300]}")
                oom = True
            except UserError as e:
                if isinstance(e, InvalidArchitecture):
                    raise
                state, values, note = _fail(ostudy, trial, runner, e.line())
                if e.exit_code != 3:  # a configuration mistake: every trial would hit it
                    raise
            except Exception as e:  # noqa: BLE001 - one broken trial must not end the study
                state, values, note = _fail(ostudy, trial, runner, f"{type(e).__name__}: {e}")
                log(traceback.format_exc(limit=3))
            if oom:  # the exception and the trial's frames are gone here: free what they held
                release_memory()
            ran += 1
            if not oom:
                failures = failures + 1 if state == TrialState.FAIL else 0
            took = time.perf_counter() - t0
            again = f" (re-run of trial {retried})" if retried is not None else ""
            msg = format_values(study, values) if values else note
            log(f"[trial {trial.number}]{again} {state.name:8s} {msg}  ({took:.0f} s)")
            if failures >= MAX_CONSECUTIVE_FAILURES:
                raise UserError(f"{failures} trials failed in a row; see {study.output_dir}/trials/*/trial.json")
    finally:
        bar.close()
    return {"ran": ran}


def _fail(ostudy, trial, runner, reason: str):
    trial.set_user_attr("fail_reason", reason[:2000])
    ostudy.tell(trial, state=TrialState.FAIL)
    runner.record(trial, "FAIL")
    return TrialState.FAIL, None, reason


def _requeue(ostudy, trial, reason: str) -> None:
    """Ctrl-C: fail the trial and queue its parameters again, so the next run re-runs it."""
    try:
        trial.set_user_attr("interrupted", reason)
        ostudy.tell(trial, state=TrialState.FAIL)
        optuna.storages.RetryHeartbeatStaleTrialCallback()(ostudy, trial.storage.get_trial(id_of(trial)))
    except Exception:  # the next run's orphan check will do it
        pass


def run_study(study, *, workers: int = 1, progress: bool = True, worker_only: bool = False,
              finish: bool = True) -> dict:
    """Run (or continue) ``study`` with ``workers`` local processes; write the Pareto front and the
    dashboard at the end."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # Our loop records heartbeats itself (storage.Heartbeat), as Study.optimize would.
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        return _run_study(study, workers=workers, progress=progress, worker_only=worker_only, finish=finish)


def _run_study(study, *, workers, progress, worker_only, finish):
    cfg = study.cfg
    out = study.output_dir
    t0 = time.time()
    deadline = t0 + cfg.timeout if cfg.timeout else None
    if worker_only:
        return run_worker(study, workers=workers, progress=False, deadline=deadline)
    provenance.write_study_files(study, out, workers=workers)
    # Create the study once, before any worker starts (concurrent creation races).
    storage = open_storage(cfg.storage)
    create_or_load(study, storage).set_user_attr("study_file", study.resolved_dict())
    if workers <= 1:
        run_worker(study, workers=1, progress=progress, deadline=deadline)
    else:
        _run_local_workers(study, workers, progress, deadline)
    summary = {"seconds": time.time() - t0}
    if finish and cfg.fidelity is not None:  # the study's fidelity: section, before the front is shown
        from archsearch.fidelity.in_study import evaluate_front

        evaluate_front(study, workers=workers, progress=progress)
    if finish:
        from archsearch.study.dashboard import write_dashboard
        from archsearch.study.pareto import load_run, pareto_report, print_pareto

        run = load_run(out)
        rep = pareto_report(run)
        from snapgen.cache import atomic_write_json

        atomic_write_json(out / "pareto.json", rep)
        print_pareto(rep)
        path = write_dashboard(run, out / "dashboard.html")
        print(f"dashboard: {path}")
        summary["pareto"] = rep
    print(f"study {study.name}: {summary['seconds']:.0f} s this run; results in {out}/")
    return summary


def visible_gpus() -> list[str]:
    """This host's GPUs that this process may use, as ``CUDA_VISIBLE_DEVICES`` entries."""
    if not torch.cuda.is_available():
        return []
    n = torch.cuda.device_count()
    mask = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return mask[:n] if mask else [str(i) for i in range(n)]


def resolve_workers(workers) -> int:
    """``auto``: one worker per visible GPU; without GPUs, 1 (the study default: on a CPU host the
    proxy trains single-threaded per worker, and a shared CPU is the common case). Else the number."""
    if workers == "auto":
        return max(1, len(visible_gpus()))
    return int(workers)


def worker_environments(workers: int, gpus: list[str]) -> list[dict]:
    """The environment of each local worker: with GPUs, worker i sees only ``gpus[i % len(gpus)]``
    (``CUDA_VISIBLE_DEVICES``), so its ``auto``/``cuda`` device is its own GPU."""
    return [dict(os.environ, CUDA_VISIBLE_DEVICES=gpus[i % len(gpus)]) if gpus else dict(os.environ)
            for i in range(workers)]


def _run_local_workers(study, workers: int, progress: bool, deadline) -> None:
    """``--workers N``: N processes of ``archsearch run ... --worker-only`` on this host, sharing the
    storage, each pinned to its own GPU where the host has some; this process shows the progress.
    (Processes, not threads: each trial trains a model.)"""
    from snapgen.progress import progress as progress_bar

    gpus = visible_gpus()
    device = str(study.cfg.proxy.get("device", "auto")) if study.cfg.proxy else "auto"
    if gpus and device.startswith("cuda:"):
        raise UserError(f"{device} names one GPU, but each of the {workers} workers is given its own; use auto or "
                        "cuda", file=str(study.file), key="proxy.device")
    logs = study.output_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "archsearch.cli", "run", str(study.file), *study.overrides, "--worker-only",
           "--workers", str(workers)]
    procs = []
    for i, env in enumerate(worker_environments(workers, gpus)):
        f = open(logs / f"worker-{i}.log", "a")
        procs.append((subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env), f))
    storage = open_storage(study.cfg.storage)
    ostudy = optuna.load_study(study_name=study.name, storage=storage)
    bar = progress_bar(total=study.cfg.n_trials, desc=f"study {study.name} ({workers} workers)", unit="trial",
                       file=sys.stderr, disable=not progress, dynamic_ncols=True)
    seen = set()
    try:
        while True:
            alive = [p for p, _ in procs if p.poll() is None]
            for t in ostudy.get_trials(deepcopy=False):
                if t.state.is_finished() and t.number not in seen:
                    seen.add(t.number)
                    bar.write(f"[trial {t.number}] {t.state.name:8s} " + (
                        format_values(study, t.values) if t.values else
                        t.user_attrs.get("pruned_reason") or t.user_attrs.get("fail_reason") or ""))
            n_done = min(sum(map(is_counted, ostudy.get_trials(deepcopy=False))), study.cfg.n_trials)
            if n_done != bar.n:
                bar.n = n_done
                bar.refresh()
            if not alive:
                break
            time.sleep(2)
    except KeyboardInterrupt:
        for p, _ in procs:
            p.terminate()
        raise
    finally:
        bar.close()
        for _, f in procs:
            f.close()
    bad = [p.returncode for p, _ in procs if p.returncode not in (0, None)]
    if bad:
        raise UserError(f"{len(bad)} worker(s) exited with status {bad}; see {logs}/worker-*.log")
