"""Studies that use the fidelity measurement: ``seeds: N`` (mean and spread per trial, a front that
respects the spread) and the ``fidelity:`` section (the final front re-evaluated when the run ends;
reference values in pareto, the dashboard and promote --pick). On the ``synthetic`` metric, whose
value at any seed and budget the tests compute themselves."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from archsearch.cli import main
from archsearch.objectives.synthetic import synthetic_quality
from archsearch.stats import noisy_front
from archsearch.study.pareto import Run, completed, feasible, load_run, pareto_report, pareto_trials
from archsearch.study.schema import load_study
from conftest import TINY_UNET_SPACE, run_tiny_study, tiny_study_text


def _run_study(d: Path, extra: str, n_trials: int = 10) -> Path:
    return run_tiny_study(d, tiny_study_text(name="tiny", n_trials=n_trials, extra=extra))


@pytest.fixture(scope="module")
def seeded_run(tmp_path_factory) -> Path:
    """20 trials, 3 seeds each, early stopping on, the front (+1) re-evaluated at 4x evals with 2 seeds."""
    return _run_study(tmp_path_factory.mktemp("seeded"), "seeds: 3\nfidelity: {budget_mult: 4, seeds: 2, k: 1}\n",
                      n_trials=20)


def _value(study, t, evals: int, seed: int) -> float:
    """The synthetic metric of trial ``t``'s architecture, computed here from its spec."""
    spec = study.space.build(t.user_attrs["spec"])
    return synthetic_quality(spec, t.user_attrs["metrics"]["params"], evals=evals, seconds_per_eval=0.0,
                             seed=seed).value


def _cli(args, capsys):
    capsys.readouterr()
    try:
        rc = main(args)
    except SystemExit as e:  # a UserError: one line on stderr, its exit status
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_seeds_mean_spread_and_common_random_numbers(seeded_run):
    run = load_run(seeded_run)
    study = load_study(seeded_run.parent / "study.yaml")
    done = [t for t in completed(run) if "duplicate_of" not in t.user_attrs]
    assert len(done) >= 4
    for t in done:
        s = t.user_attrs["quality_seeds"]
        assert s["seeds"] == [0, 1, 2] and s["objective"] == "synthetic" and s["n"] == 3
        expect = [_value(study, t, 3, seed) for seed in (0, 1, 2)]  # seed i is seed i for every trial
        assert s["values"] == pytest.approx(expect, abs=1e-9)
        assert len(set(np.round(expect, 9))) == 3  # the seeds are different draws
        assert t.values[0] == pytest.approx(np.mean(expect)) == pytest.approx(s["mean"])
        assert s["std"] == pytest.approx(np.std(expect, ddof=1))
        assert s["se"] == pytest.approx(s["std"] / math.sqrt(3))
    stopped = [t for t in run.study.get_trials() if "early_stopped" in t.user_attrs]
    assert stopped  # early stopping ran on the first seed, and the other seeds did not run for them
    for t in stopped:
        assert "quality_seeds" not in t.user_attrs and len(t.user_attrs["evals"]) <= 3  # stopped at a rung (the last one too)
        assert t.user_attrs["evals"][-1][1] == pytest.approx(
            _value(study, t, 3, 0) * (1 + 2 * (1 - len(t.user_attrs["evals"]) / 3)))  # seed 0 at its rung


def test_front_of_a_seeded_run_respects_the_spread(seeded_run):
    run = load_run(seeded_run)
    trials = [t for t in completed(run) if feasible(t) and "duplicate_of" not in t.user_attrs]
    se = [[t.user_attrs["quality_seeds"]["se"], 0, 0] for t in trials]
    expect = {trials[i].number for i in noisy_front([t.values for t in trials], run.directions, se)}
    front = {p["number"] for p in pareto_report(run)["pareto"]}
    assert front == expect
    plain = {t.number for t in run.study.best_trials if "duplicate_of" not in t.user_attrs}
    assert plain <= front


def _toy_run(tmp_path, seeds: int, points) -> Run:
    """An in-memory study of (quality, se, params) points, read as a run with ``seeds``."""
    study = optuna.create_study(directions=["minimize", "minimize"])
    for i, (q, se, params) in enumerate(points):
        study.add_trial(optuna.trial.create_trial(
            values=[q, params], user_attrs={"spec_hash": f"h{i}", "quality_seeds": {
                "objective": "synthetic", "seeds": [0, 1, 2], "mean": q, "se": se}}))
    cfg = {"name": "toy", "seeds": seeds, "objectives": [{"name": "synthetic", "direction": "minimize"},
                                                         {"name": "params", "direction": "minimize"}]}
    return Run(tmp_path, cfg, study)


def test_a_trial_within_the_noise_stays_on_the_front(tmp_path):
    # trial 1 is plainly dominated by trial 0 (worse quality, same params) but by less than the noise;
    # trial 2 is worse by far more than it
    pts = [(10.0, 0.5, 1e6), (10.5, 0.5, 1e6), (20.0, 0.5, 1e6), (30.0, 0.5, 5e5)]
    assert [t.number for t in pareto_trials(_toy_run(tmp_path, 3, pts))] == [0, 1, 3]
    assert [t.number for t in pareto_trials(_toy_run(tmp_path, 1, pts))] == [0, 3]  # one seed: Optuna's front
    precise = [(q, 0.1, p) for q, _, p in pts]  # 0.5 apart is now outside 1.96 x sqrt(2) x 0.1
    assert [t.number for t in pareto_trials(_toy_run(tmp_path, 3, precise))] == [0, 3]


def test_fidelity_section_reference_values_in_pareto_dashboard_promote(seeded_run, capsys):
    run = load_run(seeded_run)
    study = load_study(seeded_run.parent / "study.yaml")
    root = seeded_run / "fidelity"
    ptr = json.loads((root / "study.json").read_text())
    rep = json.loads((root / ptr["report"]).read_text())
    trials = {t.number: t for t in run.study.get_trials()}
    front = pareto_trials(run)
    front_hashes = {t.user_attrs["spec_hash"] for t in front}
    archs = {a["spec_hash"]: a for a in rep["architectures"]}
    assert front_hashes <= set(archs) and len(archs) == len(front_hashes) + 1  # the front and k = 1 more
    # the reference: 4 x 3 evals, seeds 0 and 1, computed here; the proxy side: the run's own 3 seeds
    expect = {}
    for a in rep["architectures"]:
        t = trials[a["trial"]]
        ref = [_value(study, t, 12, s) for s in (0, 1)]
        assert a["reference"]["mean"] == pytest.approx(np.mean(ref))
        assert list(a["proxy"]["values"].values()) == pytest.approx(t.user_attrs["quality_seeds"]["values"])
        expect[a["spec_hash"]] = np.mean(ref)
    log = [json.loads(x) for x in (root / "evaluations.jsonl").read_text().splitlines()]
    assert len(log) == 2 * len(archs) and {r["side"] for r in log} == {"reference"}  # no proxy seed re-run
    # pareto: the reference column, from the run directory (not from the Optuna trials)
    rc, out, _ = _cli(["pareto", str(seeded_run), "--json"], capsys)
    assert rc == 0
    for p in json.loads(out)["pareto"]:
        assert p["reference"] == {"ref_synthetic": pytest.approx(expect[trials[p["number"]].user_attrs["spec_hash"]])}
        assert "ref_synthetic" not in trials[p["number"]].user_attrs.get("metrics", {})
    rc, out, _ = _cli(["pareto", str(seeded_run)], capsys)
    header = next(line for line in out.splitlines() if line.strip().startswith("trial"))
    assert header.split() == ["trial", "synthetic", "params", "gflops", "ref_synthetic"]
    t0 = front[0]
    row = next(line for line in out.splitlines() if line.split()[:1] == [str(t0.number)])
    s = t0.user_attrs["quality_seeds"]
    assert f"{s['mean']:.4g}±{s['se']:.2g}" in row and f"{expect[t0.user_attrs['spec_hash']]:.4g}" in row
    # the dashboard has the report's section
    assert "Proxy fidelity" in (seeded_run / "dashboard.html").read_text()
    # promote --pick by the reference values
    rule = "min ref_synthetic where params <= 7e5"
    rc, out, err = _cli(["promote", str(seeded_run), "--pick", rule, "-o", str(seeded_run / "p.yaml")], capsys)
    assert rc == 0, err
    cands = [t for t in completed(run) if feasible(t) and "duplicate_of" not in t.user_attrs
             and t.user_attrs["metrics"]["params"] <= 7e5 and t.user_attrs["spec_hash"] in expect]
    best = min(cands, key=lambda t: (expect[t.user_attrs["spec_hash"]], t.number))
    cfg = yaml.safe_load((seeded_run / "p.yaml").read_text())
    assert cfg["provenance"]["trial"] == best.number
    assert cfg["provenance"]["metrics"]["ref_synthetic"] == pytest.approx(expect[best.user_attrs["spec_hash"]])
    # the run again: nothing is evaluated twice
    cwd = os.getcwd()
    os.chdir(seeded_run.parent)
    try:
        assert main(["run", "study.yaml", "--no-progress"]) == 0
    finally:
        os.chdir(cwd)
    assert len((root / "evaluations.jsonl").read_text().splitlines()) == len(log)


def test_trials_without_a_reference_are_not_candidates(tmp_path, tiny_run, capsys):
    d = _run_study(tmp_path / "plain", "early_stopping: {enabled: false}\nfidelity: {budget_mult: 2, seeds: 1}\n",
                   n_trials=8)
    run = load_run(d)
    from archsearch.fidelity.in_study import reference_of

    cands = [t for t in completed(run) if feasible(t) and "duplicate_of" not in t.user_attrs]
    with_ref = [t for t in cands if reference_of(run, t)]
    assert with_ref and len(with_ref) < len(cands)  # the front has values, the rest not
    best = max(with_ref, key=lambda t: (reference_of(run, t)["ref_synthetic"], -t.number))
    rc, out, err = _cli(["promote", str(d), "--pick", "max ref_synthetic", "-o", str(tmp_path / "p.yaml")], capsys)
    assert rc == 0, err
    assert yaml.safe_load((tmp_path / "p.yaml").read_text())["provenance"]["trial"] == best.number
    rc, _, err = _cli(["promote", str(d), "--pick", "max ref_synthetic where params <= 1"], capsys)
    assert rc == 2 and f"only the {len(with_ref)} with reference values ref_synthetic are candidates" in err
    # a run without a fidelity: section has no reference values, and says so
    rc, _, err = _cli(["promote", str(tiny_run), "--pick", "min ref_synthetic"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "no trial has a reference value 'ref_synthetic'" in err and "fidelity: section" in err


BAD = {
    "seeds 0": ("seeds: 0\n", "seeds: must be >= 1"),
    "seeds not an int": ("seeds: many\n", "seeds"),
    "budget_mult -1": ("fidelity: {budget_mult: -1}\n", "fidelity.budget_mult: must be >= 1"),
    "reference seeds 0": ("fidelity: {seeds: 0}\n", "fidelity.seeds: must be >= 1"),
    "k -1": ("fidelity: {k: -1}\n", "fidelity.k: must be >= 0"),
    "workers 0": ("fidelity: {workers: 0}\n", "fidelity.workers: must be >= 1"),
    "unknown key": ("fidelity: {budget: 4}\n", "fidelity.budget: unknown key 'budget'; allowed: budget_mult"),
    "unknown override": ("fidelity: {overrides: {evalz: 9}}\n", "fidelity.overrides: synthetic.evalz: unknown key"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_values_one_line_exit_2(case, tiny_study, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    text, expect = BAD[case]
    p = tiny_study(n_trials=2, extra=text)
    rc, _, err = _cli(["run", str(p), "--no-progress"], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {p}: ") and expect in lines[0], lines
    assert not (tmp_path / "run").exists()


def test_fidelity_of_a_seeded_run_uses_its_seeds(seeded_run, tmp_path, capsys, monkeypatch):
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(seeded_run.parent, d)
    monkeypatch.chdir(d)
    rc, out, err = _cli(["fidelity", "run", "--k", "3", "--budget-mult", "8", "--seeds", "1", "--proxy-seeds", "4",
                         "--no-progress", "--bootstrap", "200"], capsys)
    assert rc == 0, err
    assert "seed(s) [0, 1, 2]: the run's own values" in out
    log = [json.loads(x) for x in (d / "run" / "fidelity" / "evaluations.jsonl").read_text().splitlines()]
    new = [r for r in log if r["side"] == "proxy"]
    assert len(new) == 3 and {r["seed"] for r in new} == {3}  # only the seed the run does not hold


def test_each_seed_goes_through_the_study_dispatch(tmp_path, monkeypatch):
    """The fd-fmnist metric's dispatch trains seed, seed+1, ... in turn (the proxy replaced by a recorder); the
    first seed alone sees the early-stopping callback, and a stop there runs no other seed."""
    from types import SimpleNamespace

    from archsearch.study import seeds as seeds_mod
    from archsearch.study.runner import TrialRunner

    (tmp_path / "space.yaml").write_text(TINY_UNET_SPACE)
    text = tiny_study_text(name="fdfm").replace("- {name: synthetic}", "- {name: fd-fmnist}").replace(
        "reference_point: {synthetic: 80,", "reference_point: {fd-fmnist: 300,")
    (tmp_path / "fdfm.yaml").write_text(text + "seed: 5\nseeds: 3\nproxy: {steps: 10, eval_every: 5}\n")
    study = load_study(tmp_path / "fdfm.yaml")
    calls = []

    def run_proxy(spec, cfg, *, seed, on_eval):
        stop = on_eval(5, 200.0 + seed) if on_eval is not None else False
        calls.append((seed, on_eval is not None))
        return SimpleNamespace(metric="fd-fmnist", value=(200.0 if stop else 100.0) + seed, steps=5 if stop else 10,
                               to_dict=lambda: {})

    monkeypatch.setattr("snapgen.proxy.run_proxy", run_proxy)  # what the registry's fd-fmnist entry runs
    runner = TrialRunner(study, None, log=lambda s: None)
    spec = study.space.preset("tiny")
    for stop in (False, True):
        calls.clear()
        attrs = {}
        trial = SimpleNamespace(set_user_attr=attrs.__setitem__)
        res = seeds_mod.run_quality(runner, spec, {}, lambda step, v: stop, trial)
        if stop:
            assert calls == [(5, True)] and res.value == 205.0 and attrs == {}
        else:
            assert calls == [(5, True), (6, False), (7, False)]
            assert res.value == pytest.approx(106.0) and attrs["quality_seeds"]["values"] == [105.0, 106.0, 107.0]
            assert attrs["quality_seeds"]["se"] == pytest.approx(1 / math.sqrt(3))
    assert runner.cfg.seed == 5  # the runner itself is unchanged
