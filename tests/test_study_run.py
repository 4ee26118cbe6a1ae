"""`archsearch run`: trials, provenance, resumption, pruning of invalid architectures, kill -9
recovery, local workers, early stopping."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from archsearch.cli import main
from archsearch.study.early_stopping import SuccessiveHalving, non_domination_rank
from archsearch.study.pareto import load_run
from archsearch.study.runner import is_counted


def _trials(run_dir):
    return load_run(run_dir).study.get_trials(deepcopy=False)


def test_run_provenance_and_continue(tiny_run, tmp_path):
    run = load_run(tiny_run)
    trials = run.study.get_trials(deepcopy=False)
    assert sum(map(is_counted, trials)) == 10  # evaluated architectures; repeats are free
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert run.study.metric_names == ["synthetic", "params", "gflops"]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert done and all(t.constraints for t in done)  # constraints recorded with trial.set_constraint
    for t in done:
        rec = json.loads((tiny_run / "trials" / str(t.number) / "trial.json").read_text())
        assert rec["state"] == "COMPLETE" and rec["seed"] == 0 and rec["spec"] == t.user_attrs["spec"]
        assert set(rec["metrics"]) >= {"synthetic", "params", "gflops"} and rec["timings"]["total_s"] >= 0
        assert rec["code_version"]["commit"]
        assert (tiny_run / "trials" / str(t.number) / "spec.yaml").is_file()
    prov = [json.loads(x) for x in (tiny_run / "provenance.jsonl").read_text().splitlines()]
    assert prov[0]["code_version"]["commit"] and (tiny_run / "study.yaml").is_file()
    assert (tiny_run / "pareto.json").is_file() and (tiny_run / "dashboard.html").is_file()


def test_rerun_continues_exactly(tiny_study, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = tiny_study(n_trials=3)
    assert main(["run", str(p), "--no-progress"]) == 0
    first = {t.number: (t.values, t.datetime_complete) for t in _trials(tmp_path / "run")}
    n0 = len(_trials(tmp_path / "run"))
    assert main(["run", str(p), "--no-progress"]) == 0  # complete already: nothing new
    assert len(_trials(tmp_path / "run")) == n0
    assert main(["run", str(p), "n_trials=5", "--no-progress"]) == 0
    trials = _trials(tmp_path / "run")
    assert sum(map(is_counted, trials)) == 5
    assert {t.number: (t.values, t.datetime_complete) for t in trials if t.number in first} == first


def test_invalid_architecture_is_pruned_with_reason(tiny_study, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = tiny_study(n_trials=4)
    # The space offers only choices that fit; one that never fits where stage 1 has a transformer
    # (40 % head_dim 16 != 0) is still sampled there, and pruned with its reason.
    space = (tmp_path / "space.yaml").read_text().replace(
        "    channels: {per_stage: true, choices: [[16, 32, 48], [32, 64, 80]]}\n"
        "    transformer_depth: {per_stage: true, choices: [[0, 1], [1, 2]]}\n",
        "    transformer_depth: {per_stage: true, choices: [[0, 1], [0, 1]]}\n"
        "    channels: {per_stage: true, choices: [[16, 32, 48], [40]]}\n")
    assert "[40]" in space
    (tmp_path / "space.yaml").write_text(space)
    assert main(["run", str(p), "sampler.name=random", "~sampler.options", "--no-progress"]) == 0
    pruned = [t for t in _trials(tmp_path / "run") if "invalid architecture" in t.user_attrs.get("pruned_reason", "")]
    assert pruned and all(t.state == TrialState.PRUNED and t.user_attrs["invalid"] for t in pruned)
    assert sum(map(is_counted, _trials(tmp_path / "run"))) == 4  # invalid samples do not use up the budget
    assert "head_dim" in pruned[0].user_attrs["pruned_reason"]


def test_non_domination_rank():
    v = np.array([[1, 5], [2, 2], [5, 1], [3, 3], [4, 4], [6, 6]], float)
    assert non_domination_rank(v).tolist() == [0, 0, 0, 1, 2, 3]


def test_successive_halving_keeps_small_fast_trials():
    """A poor-quality but tiny architecture survives (it is non-dominated); a dominated one stops."""
    study = optuna.create_study(directions=["minimize", "minimize"])
    for q, p in [(10, 100), (12, 90), (11, 95), (30, 120)]:
        t = study.ask()
        t.set_user_attr("evals", [[50, q]])
        t.set_user_attr("metrics", {"params": p})
        study.tell(t, [q, p])
    sh = SuccessiveHalving(["fid", "params"], ["minimize", "minimize"], "fid", eta=3, min_trials=4)
    assert not sh.decide(study, 99, 50, 40.0, {"params": 10}).stop  # worst quality, smallest: kept
    d = sh.decide(study, 99, 50, 40.0, {"params": 150})  # dominated by everyone: stopped
    assert d.stop and "step 50" in d.reason
    assert not sh.decide(study, 99, 25, 40.0, {"params": 150}).stop  # nobody else at that rung yet


def test_successive_halving_keeps_the_cheapest_among_many_extremes():
    """Three objectives, every trial an extreme of something (crowding distance infinity for all, so
    NSGA-II's order degenerates to quality alone): the cheapest, worst-quality trial still goes on
    (largest exclusive hypervolume), a near-twin of a kept trial that adds almost nothing stops."""
    study = optuna.create_study(directions=["minimize"] * 3)
    for q, p, g in [(10, 100, 100), (12, 90, 110), (11, 95, 105), (13, 120, 90)]:
        t = study.ask()
        t.set_user_attr("evals", [[40, q]])
        t.set_user_attr("metrics", {"params": p, "gflops": g})
        study.tell(t, [q, p, g])
    names, dirs = ["fid", "params", "gflops"], ["minimize"] * 3
    sh = SuccessiveHalving(names, dirs, "fid", eta=3, min_trials=4, reference={"fid": 60, "params": 200, "gflops": 200})
    assert not sh.decide(study, 99, 40, 40.0, {"params": 50, "gflops": 50}).stop
    assert sh.decide(study, 99, 40, 12.0, {"params": 90.5, "gflops": 109.5}).stop


def _wait(pred, timeout=120.0, every=0.3):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return True
        time.sleep(every)
    return False


@pytest.mark.slow
def test_kill_9_then_rerun_completes(tiny_study, tmp_path):
    """kill -9 mid-trial; the same command again finishes the study, keeps every completed trial and
    re-runs the interrupted one with the same parameters."""
    p = tiny_study(n_trials=5, extra="")
    cmd = [sys.executable, "-m", "archsearch.cli", "run", str(p), "synthetic.seconds_per_eval=1.0",
           "early_stopping.enabled=false", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = tmp_path / "run" / "study.db"

    def running_after_two():
        if not db.is_file():
            return False
        try:
            ts = _trials(tmp_path / "run")
        except Exception:
            return False
        return sum(t.state == TrialState.COMPLETE for t in ts) >= 2 and any(
            t.state == TrialState.RUNNING and "metrics" in t.user_attrs for t in ts)  # mid-training

    try:
        assert _wait(running_after_two), "the study never reached a running third trial"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    before = {t.number: (t.values, t.params, t.datetime_complete) for t in _trials(tmp_path / "run")
              if t.state == TrialState.COMPLETE}
    killed = [t for t in _trials(tmp_path / "run") if t.state == TrialState.RUNNING]
    assert len(killed) == 1
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "its worker died" in r.stderr
    trials = _trials(tmp_path / "run")
    assert {t.number: (t.values, t.params, t.datetime_complete) for t in trials if t.number in before} == before
    k = next(t for t in trials if t.number == killed[0].number)
    assert k.state == TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == k.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == k.params
    assert sum(map(is_counted, trials)) == 5


@pytest.mark.slow
def test_local_workers_on_a_journal_file(tiny_study, tmp_path):
    """--workers 2 over a journal file: exactly n_trials counted trials, none duplicated."""
    p = tiny_study(n_trials=6)
    r = subprocess.run([sys.executable, "-m", "archsearch.cli", "run", str(p), "storage=journal:///" +
                        str(tmp_path / "journal.log"), "synthetic.seconds_per_eval=0.3", "--workers", "2",
                        "--no-progress"], cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr
    trials = _trials(tmp_path / "run")
    assert sum(map(is_counted, trials)) == 6 and all(t.state.is_finished() for t in trials)
    workers = {t.user_attrs["worker"]["pid"] for t in trials}
    assert len(workers) == 2, workers
    logs = sorted((tmp_path / "run" / "logs").glob("worker-*.log"))
    assert len(logs) == 2


@pytest.mark.parametrize("sampler", ["nsga2", "nsga3", "gp", "grid"])  # tpe, random: above
def test_every_sampler_runs(sampler, tiny_study, tmp_path, monkeypatch):
    from archsearch.study.runner import run_study
    from archsearch.study.schema import load_study

    monkeypatch.chdir(tmp_path)
    study = load_study(tiny_study(n_trials=3), [f"sampler.name={sampler}", "~sampler.options", "sampler.seed=1"])
    run_study(study, progress=False, finish=False)
    trials = _trials(tmp_path / "run")
    assert sum(t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs for t in trials) + sum(
        t.state == TrialState.PRUNED and "invalid" not in t.user_attrs for t in trials) == 3
