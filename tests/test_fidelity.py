"""`archsearch fidelity`: architectures re-evaluated at a higher fidelity through the study's own quality
code (the `synthetic` metric here: seconds), the statistics of proxy vs reference, resumption after
kill -9, bad arguments."""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import kendalltau, spearmanr

from archsearch.cli import main
from archsearch.study.early_stopping import non_domination_rank
from archsearch.study.pareto import load_run, pareto_trials
from conftest import TINY_UNET_SPACE, tiny_study_text

PRESET_SPACE = TINY_UNET_SPACE.replace("\nsearch:", """
  wide:
    extends: tiny
    arch: {channels: [48, 80]}
  deep:
    extends: tiny
    arch: {transformer_depth: [1, 2]}
  lean:
    extends: tiny
    arch: {ffn_ratio: 2, conv: separable}
search:""")
assert "wide:" in PRESET_SPACE


@pytest.fixture
def run_copy(tiny_run_complete, tmp_path):
    """A private copy of the session's tiny run without early stopping (its study file and space beside it)."""
    d = tmp_path / "exp"
    shutil.copytree(tiny_run_complete.parent, d)
    return d / "run"


def _fidelity_json(args, capsys) -> dict:
    capsys.readouterr()
    assert main(["fidelity", *args, "--no-progress", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _synthetic_truth(params: float) -> float:
    """The synthetic metric without its seed noise (archsearch/objectives/synthetic.py)."""
    return 40.0 / (1.0 + math.log10(params / 1e5)) + 5.0


def _lines(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def test_fidelity_of_a_run(run_copy, capsys):
    rep = _fidelity_json([str(run_copy), "--k", "6", "--seeds", "3", "--proxy-seeds", "2", "--budget-mult", "4",
                          "--bootstrap", "500"], capsys)
    run = load_run(run_copy)
    trials = {t.number: t for t in run.study.get_trials(deepcopy=False)}
    archs = rep["architectures"]
    assert len(archs) == 6
    front = {t.number for t in pareto_trials(run)}
    assert front <= {a["trial"] for a in archs}  # the run's front is always re-evaluated
    assert all(a["run_front"] == (a["trial"] in front) for a in archs)
    # the proxy side at the study's seed is the run's own value; seed 1 was evaluated at the study's settings
    for a in archs:
        assert a["proxy"]["values"]["0"] == pytest.approx(trials[a["trial"]].values[0])
        assert set(a["proxy"]["values"]) == {"0", "1"} and set(a["reference"]["values"]) == {"0", "1", "2"}
    assert rep["sides"]["proxy"]["settings"]["evals"] == 3 and rep["sides"]["reference"]["settings"]["evals"] == 12
    # Through the synthetic metric's own code: a seed's noise draw is the same at both budgets, shrunk by
    # sqrt(3 / 12) at 4x the evaluations -- exactly, for every architecture and shared seed.
    for a in archs:
        t = _synthetic_truth(a["metrics"]["params"])
        for s in ("0", "1"):
            assert a["reference"]["values"][s] - t == pytest.approx((a["proxy"]["values"][s] - t) * 0.5, abs=1e-9)
    # the statistics are the report's own numbers' statistics
    x = [a["proxy"]["mean"] for a in archs]
    y = [a["reference"]["mean"] for a in archs]
    c = rep["correlation"]
    assert c["spearman"]["value"] == pytest.approx(spearmanr(x, y).statistic)
    assert c["kendall"]["value"] == pytest.approx(kendalltau(x, y).statistic)
    assert -1 <= c["spearman"]["low"] <= c["spearman"]["high"] <= 1
    assert "share seeds [0, 1]" in c["note"]
    assert [s["proxy_seed"] for s in rep["single_seed"]] == [0, 1]
    s0 = rep["single_seed"][0]
    assert s0["reference_seeds"] == [1, 2]
    y_other = [np.mean([a["reference"]["values"]["1"], a["reference"]["values"]["2"]]) for a in archs]
    assert s0["spearman"]["value"] == pytest.approx(spearmanr([a["proxy"]["values"]["0"] for a in archs],
                                                              y_other).statistic)
    # seed noise: the reference's (12 evals) is half the proxy's (3 evals) in expectation; pooled here
    nz_r, nz_p = rep["noise"]["reference"], rep["noise"]["proxy"]
    sds = [np.std(list(a["reference"]["values"].values()), ddof=1) for a in archs]
    assert nz_r["noise"] == pytest.approx(math.sqrt(np.mean(np.square(sds))))
    assert nz_r["spread"] == pytest.approx(np.std(y, ddof=1))
    assert nz_r["resolvable_single_seed"] == pytest.approx(2 * math.sqrt(2) * nz_r["noise"])
    assert nz_p["noise"] > nz_r["noise"]
    # fronts: recomputed from the report's values (objectives synthetic, params, gflops; params <= 1.2e6)
    for side, key in (("proxy", "proxy"), ("reference", "reference")):
        feas = [a for a in archs if a["metrics"]["params"] <= 1.2e6]
        v = np.array([[a[side]["mean"], a["metrics"]["params"], a["metrics"]["gflops"]] for a in feas])
        expect = sorted(a["label"] for a, r in zip(feas, non_domination_rank(v)) if r == 0)
        assert sorted(rep["fronts"][key]) == expect
    rec = rep["fronts"]["recovery"]
    assert rec["recovered"] == len(set(rep["fronts"]["proxy"]) & set(rep["fronts"]["reference"]))
    assert set(rep["fronts"]["reference"]) <= set(rep["fronts"]["reference_noisy"])
    # files beside the run
    d = Path(rep["files"]["dir"])
    assert d.parent == run_copy / "fidelity"
    assert json.loads((d / "report.json").read_text()) == rep
    html = (d / "fidelity.html").read_text()
    assert "Proxy vs reference" in html and len(html) > 1_000_000  # plotly.js inside
    assert '<script src="http' not in html and "<script src='http" not in html  # nothing fetched
    lines = _lines(run_copy / "fidelity" / "evaluations.jsonl")
    assert len(lines) == 6 * (3 + 1) == len({r["key"] for r in lines})  # 3 reference seeds + 1 new proxy seed
    # again: nothing is evaluated twice, and the report is the same
    rep2 = _fidelity_json([str(run_copy), "--k", "6", "--seeds", "3", "--proxy-seeds", "2", "--budget-mult", "4",
                           "--bootstrap", "500"], capsys)
    assert len(_lines(run_copy / "fidelity" / "evaluations.jsonl")) == 24
    assert rep2["correlation"] == rep["correlation"]
    # other settings (more evals) are other evaluations, in another experiment directory, same log
    rep3 = _fidelity_json([str(run_copy), "--k", "6", "--seeds", "3", "--budget-mult", "8", "--bootstrap", "200"],
                          capsys)
    assert rep3["files"]["dir"] != rep["files"]["dir"] and rep3["noise"]["proxy"] is None
    # the dashboard's hooks: every report of the run, and an HTML section without plotly.js
    from archsearch.fidelity.report import fidelity_section, load_reports

    assert {r["files"]["dir"] for r in load_reports(run_copy)} == {rep["files"]["dir"], rep3["files"]["dir"]}
    sec = fidelity_section(rep)
    assert sec.startswith("<h2>Proxy fidelity") and "front recovery" in sec and len(sec) < 200_000
    assert len(_lines(run_copy / "fidelity" / "evaluations.jsonl")) == 24 + 18


def test_fidelity_of_presets_and_spec_files(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(PRESET_SPACE)
    (tmp_path / "study.yaml").write_text(tiny_study_text())
    spec = tmp_path / "narrow.yaml"
    spec.write_text(textwrap.dedent("""\
        latent_channels: 4
        context_dim: 32
        head_dim: 16
        norm_groups: 8
        channels: [16, 32]
        layers: 1
        transformer_depth: [0, 1]
        cross_attention: [false, true]
        """))
    rep = _fidelity_json(["study.yaml", "--presets", f"tiny,wide,deep,lean,{spec}", "--seeds", "2",
                          "--budget-mult", "2", "--bootstrap", "300"], capsys)
    labels = [a["label"] for a in rep["architectures"]]
    assert labels == ["tiny", "wide", "deep", "lean", "narrow"]
    assert rep["source"]["kind"] == "presets"
    for a in rep["architectures"]:  # presets: the proxy side is evaluated too, with the same seeds
        assert set(a["proxy"]["values"]) == set(a["reference"]["values"]) == {"0", "1"}
        assert a["metrics"]["params"] > 0 and a["metrics"]["gflops"] > 0  # exact metrics measured like a trial's
        t = _synthetic_truth(a["metrics"]["params"])
        for s in ("0", "1"):  # 3 -> 6 evals: the noise shrinks by sqrt(1/2)
            assert a["reference"]["values"][s] - t == pytest.approx((a["proxy"]["values"][s] - t) / math.sqrt(2))
    assert rep["noise"]["proxy"]["seeds"] == 2 and len(rep["single_seed"]) == 2
    assert Path(rep["files"]["dir"]).resolve().parent == (tmp_path / "run" / "fidelity").resolve()


@pytest.mark.slow
def test_fidelity_resumes_after_kill_9(run_copy):
    """kill -9 mid-measurement (2 pool workers); the same command again evaluates only what is missing."""
    exp = run_copy.parent
    cmd = [sys.executable, "-m", "archsearch.cli", "fidelity", "run", "seconds_per_eval=0.25", "--k", "4",
           "--seeds", "2", "--budget-mult", "2", "--workers", "2", "--no-progress", "--bootstrap", "200"]
    log = run_copy / "fidelity" / "evaluations.jsonl"
    proc = subprocess.Popen(cmd, cwd=exp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        t0 = time.time()
        while time.time() - t0 < 120 and not (log.is_file() and len(_lines(log)) >= 2):
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)  # the parent only, as `kill -9 PID` would
        proc.wait()
        time.sleep(2.0)  # an orphaned pool worker may finish its evaluation: it must not write, nor start another
        before = {r["key"]: r for r in _lines(log)}
        assert 2 <= len(before) < 8, "killed too late to test resumption"
        r = subprocess.run(cmd, cwd=exp, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert f"8 evaluations ({len(before)} already in" in r.stderr
        after = _lines(log)
        assert len({x["key"] for x in after}) == 8 == len(after)  # each evaluation once
        assert {x["key"]: x for x in after if x["key"] in before} == before  # finished ones kept as they were
        assert all(x["pid"] != proc.pid for x in after if x["key"] not in before)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # any orphaned worker
        except ProcessLookupError:
            pass


def _fid_study(tmp_path) -> Path:
    (tmp_path / "space.yaml").write_text(PRESET_SPACE)
    text = tiny_study_text(name="tinyfid").replace("- {name: synthetic}", "- {name: fd-fmnist}").replace(
        "reference_point: {synthetic: 80,", "reference_point: {fd-fmnist: 300,")
    p = tmp_path / "fid.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("args, message", [
    (["--presets", "tiny,nosuch"], "--presets: unknown preset 'nosuch'"),
    (["--presets", "tiny"], "at least 2 architectures"),
    (["--k", "1"], "--k: must be >= 2"),
    (["--budget-mult", "0.5"], "--budget-mult: must be >= 1"),
    (["--seeds", "0"], "--seeds: must be >= 1"),
    (["--proxy-seeds", "0"], "--proxy-seeds: must be >= 1"),
    (["--workers", "0"], "--workers: must be >= 1"),
    (["nosuch_key=3"], "unknown key 'nosuch_key'"),
    (["evals=zero"], "synthetic.evals"),
    (["--resolution", "64"], "--resolution: the synthetic metric has no resolution"),
])
def test_bad_arguments_synthetic(run_copy, capsys, args, message):
    before = sorted(p.relative_to(run_copy) for p in run_copy.rglob("*"))
    overrides = [a for a in args if "=" in a]
    opts = [a for a in args if "=" not in a]
    with pytest.raises(SystemExit) as e:
        main(["fidelity", str(run_copy), *overrides, *opts, "--no-progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert sorted(p.relative_to(run_copy) for p in run_copy.rglob("*")) == before  # nothing written


@pytest.mark.parametrize("args, message", [
    (["--resolution", "30"], "--resolution: 30 px is not a multiple of 4"),
    (["--resolution", "36"], "cannot halve 1 times; use a multiple of 8 px"),
    (["resolution=64"], "resolution: resolution 64 differs from ae.resolution 32"),
    (["num_sample=1000"], "proxy.num_sample: unknown key 'num_sample'"),
    (["sampler=ddim"], "unknown sampler 'ddim'"),
])
def test_bad_arguments_fid(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    study = _fid_study(tmp_path)
    overrides = [a for a in args if "=" in a]
    opts = [a for a in args if "=" not in a]
    with pytest.raises(SystemExit) as e:
        main(["fidelity", str(study), *overrides, "--presets", "tiny,wide", *opts, "--no-progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run").exists()


def test_bad_sources(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    for args, message in ([["empty"], "not a run directory (no study.yaml)"],
                          [["nowhere"], "no such run directory or study file"],
                          [[], "give a run directory, a study file, or --presets"]):
        with pytest.raises(SystemExit) as e:
            main(["fidelity", *args, "--no-progress"])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    study = _fid_study(tmp_path)  # a study file without a run, and no --presets
    with pytest.raises(SystemExit):
        main(["fidelity", str(study)])
    assert "no run of this study" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["empty", "fid.yaml", "space.yaml"]


def test_reference_settings_of_a_fid_study(tmp_path, monkeypatch):
    """The reference side: x M steps, no intermediate evaluations, the resolution on proxy and embedded
    autoencoder together, then the overrides; the proxy side is the study's section untouched."""
    from archsearch.fidelity.measure import plan

    monkeypatch.chdir(tmp_path)
    study = _fid_study(tmp_path)
    text = study.read_text() + "proxy: {steps: 50, eval_every: 10, num_samples: 200}\n"
    study.write_text(text)
    pl = plan(str(study), presets="tiny,wide", budget_mult=3, seeds=2, resolution=64,
              overrides=["num_samples=1000", "classifier.steps=77"])
    ref, prox = pl.reference.resolved, pl.proxy.resolved
    assert (prox["steps"], prox["eval_every"], prox["num_samples"], prox["resolution"]) == (50, 10, 200, 32)
    assert (ref["steps"], ref["eval_every"], ref["eval_at"], ref["num_samples"]) == (150, 0, (), 1000)
    assert ref["resolution"] == ref["ae"]["resolution"] == 64 and ref["classifier"]["steps"] == 77
    assert pl.reference.seeds == (0, 1) and pl.proxy.seeds == (0, 1)
    assert pl.reference.key != pl.proxy.key
    assert len(pl.jobs) == 2 * 2 * 2  # 2 presets x (2 proxy + 2 reference seeds)
    assert not (tmp_path / "run").exists()  # planning writes nothing


@pytest.mark.slow
def test_the_adapter_trains_through_the_proxy(small_proxy, tmp_path, monkeypatch):
    """One tiny proxy run through quality_value: the study's `fd-fmnist` dispatch, at the reference's steps."""
    import dataclasses

    import yaml

    from archsearch.fidelity.evaluate import quality_value, reference_side
    from archsearch.study.schema import load_study
    from proxy_helpers import small_spec

    monkeypatch.chdir(tmp_path)
    study_file = _fid_study(tmp_path)
    mapping = {k: v for k, v in dataclasses.asdict(small_proxy).items() if k != "progress"}
    mapping.update(steps=4, num_samples=100)
    study_file.write_text(study_file.read_text() + yaml.safe_dump({"proxy": json.loads(json.dumps(mapping))}))
    study = load_study(study_file)
    ref = reference_side(study, (0,), budget_mult=2)
    res = quality_value(study, small_spec(), 0, ref.quality)
    assert res.metric == "fd-fmnist" and res.steps == 8 and math.isfinite(res.value) and res.value > 0
    assert [e[0] for e in res.evaluations] == [8]  # no intermediate evaluations at the reference


def test_report_without_an_objective_has_no_fronts_and_says_why(tmp_path, monkeypatch):
    """A preset the study's latency table does not cover: correlations and noise still, fronts skipped."""
    from archsearch.fidelity.evaluate import proxy_side, reference_side
    from archsearch.fidelity.report import build_report, fidelity_section, print_report
    from archsearch.fidelity.select import from_presets
    from archsearch.study.schema import load_study

    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(PRESET_SPACE)
    (tmp_path / "study.yaml").write_text(tiny_study_text())
    study = load_study(tmp_path / "study.yaml")
    cands = from_presets(study, ["tiny", "wide", "deep"])
    for i, c in enumerate(cands):
        c.metrics = {"params": 1e6 * (i + 1), "gflops": 0.01}
    cands[1].missing = "table has no entry for unit conv"
    ps, rs = proxy_side(study, (0, 1)), reference_side(study, (0, 1), budget_mult=2)
    pv = [{0: 1.0, 1: 2.0}, {0: 3.0, 1: 3.5}, {0: 5.0, 1: 4.0}]
    rv = [{0: 1.5, 1: 2.5}, {0: 3.0, 1: 4.0}, {0: 6.0, 1: 5.0}]
    rep = build_report(study=study, source={"kind": "presets"}, cands=cands, quality="synthetic", proxy_side=ps,
                       reference_side=rs, proxy_values=pv, reference_values=rv, seconds={"proxy": 1.0},
                       n_resamples=200)
    assert rep["fronts"] == {"skipped": "no fronts: an objective is missing for wide: table has no entry for unit conv"}
    assert rep["correlation"]["spearman"]["value"] == pytest.approx(1.0)
    assert rep["noise"]["proxy"]["noise"] == pytest.approx(math.sqrt((0.5 + 0.125 + 0.5) / 3))
    assert "no fronts" in fidelity_section(rep)
    print_report(rep)


def test_same_settings_on_both_sides_are_evaluated_once(run_copy, capsys):
    """--budget-mult 1 and no overrides: the reference is the proxy's settings, one evaluation per key."""
    rep = _fidelity_json([str(run_copy), "--k", "4", "--seeds", "2", "--proxy-seeds", "2", "--budget-mult", "1",
                          "--bootstrap", "200"], capsys)
    assert rep["sides"]["proxy"]["settings_key"] == rep["sides"]["reference"]["settings_key"]
    lines = _lines(run_copy / "fidelity" / "evaluations.jsonl")
    # seeds 0 and 1 once each (not 0, 1 for the reference and 1 again for the proxy); the proxy's seed 0 is the run's
    assert len(lines) == 4 * 2 == len({r["key"] for r in lines})
    for a in rep["architectures"]:
        assert a["proxy"]["values"]["1"] == a["reference"]["values"]["1"]
        assert a["reference"]["values"]["0"] == pytest.approx(a["proxy"]["values"]["0"])  # re-run = the run's value
