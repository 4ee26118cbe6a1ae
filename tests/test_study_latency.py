"""Latency objectives in studies: `latency_ms` from a calibrated table equals the table's prediction
for each trial's full-size spec, `e2e_latency_ms` = steps x UNet latency + the decoder's (measured
once per process), and a latency objective without a latency mode is one line, exit 2."""
from __future__ import annotations

import json

import pytest
from optuna.trial import TrialState

from archsearch.cli import main
from archsearch.latency import LatencyModel, TimingPolicy, get_backend
from archsearch.latency.table import calibrate
from archsearch.study.pareto import load_run
from snapgen.spec import ArchSpec

from conftest import TINY_UNET_SPACE, tiny_study_text

QUICK = TimingPolicy(warmup=1, min_repeats=1, max_repeats=1, min_time_s=0.0, max_time_s=1.0)
TARGET = "target: {latent_size: 8, context_len: 8, sampling_steps: 4, decoder: tiny}\n"


def study_file(tmp_path, objectives: str, latency: str, ref: str, n_trials: int = 4):
    (tmp_path / "space.yaml").write_text(TINY_UNET_SPACE)
    text = tiny_study_text(n_trials=n_trials)
    text = text.replace("  - {name: gflops}\n", objectives).replace(
        "target: {latent_size: 8, context_len: 8}\n", TARGET)
    text = text.replace("gflops: 0.05}", ref) + latency
    p = tmp_path / "study.yaml"
    p.write_text(text)
    return p


def done_trials(run_dir):
    return [t for t in load_run(run_dir).study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]


def test_latency_objective_from_a_table(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    table = tmp_path / "table.jsonl"
    (tmp_path / "space.yaml").write_text(TINY_UNET_SPACE)
    calibrate(tmp_path / "space.yaml", get_backend("torch", "cpu", threads=1), table, latent_size=8, calib_latent=4,
              context_len=8, policy=QUICK, progress=False)
    p = study_file(tmp_path, "  - {name: latency_ms}\n", "latency: {mode: table, path: table.jsonl}\n",
                   "latency_ms: 1.0e4}")
    assert main(["run", str(p), "--no-progress"]) == 0
    run = load_run(tmp_path / "run")
    assert run.study.metric_names == ["synthetic", "params", "latency_ms"]
    model = LatencyModel.from_table(table)
    done = done_trials(tmp_path / "run")
    assert len(done) >= 2
    for t in done:
        spec = ArchSpec.from_dict(t.user_attrs["spec"])
        want = model.predict(spec, 8)
        assert t.values[2] == pytest.approx(want, rel=1e-9) and want > 0
    assert len({round(t.values[2], 9) for t in done}) > 1  # different architectures, different latencies
    capsys.readouterr()
    assert main(["pareto", str(tmp_path / "run"), "--json"]) == 0
    front = json.loads(capsys.readouterr().out)
    assert front["reference_point"]["latency_ms"] == 1.0e4


def test_e2e_latency_is_steps_times_unet_plus_decoder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = study_file(tmp_path, "  - {name: e2e_latency_ms}\n", "latency: {mode: measure, backend: torch, device: cpu}\n",
                   "e2e_latency_ms: 1.0e5}", n_trials=3)
    assert main(["run", str(p), "--no-progress"]) == 0
    done = done_trials(tmp_path / "run")
    assert len(done) >= 2
    decoder_ms = set()
    for t in done:
        m = json.loads((tmp_path / "run" / "trials" / str(t.number) / "trial.json").read_text())["metrics"]
        assert m["latency_ms"] > 0 and m["e2e_latency_ms"] == t.values[2]
        decoder_ms.add(round(m["e2e_latency_ms"] - 4 * m["latency_ms"], 6))
    # the tiny decoder is timed once per process: the same additive term in every trial, and positive
    assert len(decoder_ms) == 1 and decoder_ms.pop() > 0


def test_latency_objective_needs_a_mode(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    p = study_file(tmp_path, "  - {name: latency_ms}\n", "", "latency_ms: 1.0e4}")
    with pytest.raises(SystemExit) as e:
        main(["run", str(p), "--no-progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "latency.mode" in err[0] and "study.yaml" in err[0]
    assert not (tmp_path / "run").exists()
