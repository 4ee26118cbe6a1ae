"""Studies on devices: `workers: auto` (one worker per visible GPU, pinned with CUDA_VISIBLE_DEVICES),
the device in every trial's provenance, an absent device refused at load time, and a trial that
runs out of memory FAILED with its reason while the worker and the study go on."""
from __future__ import annotations

import gc
import json
import os
import weakref
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState

from archsearch.cli import main
from archsearch.study import runner
from archsearch.study.pareto import load_run
from archsearch.study.schema import load_study
from conftest import TINY_UNET_SPACE
from snapgen.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def test_workers_auto_is_one_per_visible_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runner.visible_gpus() == [] and runner.resolve_workers("auto") == 1  # CPU: the study default
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert runner.visible_gpus() == ["0", "1", "2"] and runner.resolve_workers("auto") == 3
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6,7")  # a scheduler's allocation: those GPUs, by their ids
    assert runner.visible_gpus() == ["4", "6", "7"] and runner.resolve_workers(2) == 2
    envs = runner.worker_environments(4, ["4", "6"])
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["4", "6", "4", "6"]
    assert runner.worker_environments(2, []) == [dict(os.environ)] * 2  # no GPUs: the environment as it is


def test_local_workers_are_pinned_to_their_gpus(tiny_study, tmp_path, monkeypatch):
    """_run_local_workers starts one process per worker, each seeing one GPU."""
    monkeypatch.chdir(tmp_path)
    study = load_study(tiny_study(n_trials=2))
    runner.create_or_load(study, runner.open_storage(study.cfg.storage))
    started = []

    class Done:
        returncode = 0

        def __init__(self, cmd, env=None, **kw):
            started.append((cmd, env["CUDA_VISIBLE_DEVICES"]))

        def poll(self):
            return 0

    monkeypatch.setattr(runner, "visible_gpus", lambda: ["0", "1"])
    monkeypatch.setattr(runner.subprocess, "Popen", Done)
    runner._run_local_workers(study, 2, False, None)
    assert [g for _, g in started] == ["0", "1"] and all("--worker-only" in c for c, _ in started)
    study = load_study(tiny_study(n_trials=2), ["proxy.width_mult=1.0"])
    study.cfg.proxy["device"] = "cuda:1"  # one named GPU cannot be every worker's
    with pytest.raises(UserError, match="proxy.device: cuda:1 names one GPU"):
        runner._run_local_workers(study, 2, False, None)


def test_workers_field_and_flag(tiny_study, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    p = tiny_study(n_trials=2)
    assert load_study(p, ["workers=auto"]).cfg.workers == "auto"
    for bad in ("workers=0", "workers=many", "workers=true"):
        with pytest.raises(UserError, match="workers: must be an integer >= 1 or auto"):
            load_study(p, [bad])
    with pytest.raises(SystemExit) as e:
        main(["run", str(p), "--workers", "none", "--no-progress"])
    assert e.value.code == 2 and "--workers: must be an integer >= 1 or auto" in capsys.readouterr().err
    assert main(["run", str(p), "--workers", "auto", "--no-progress"]) == 0  # no GPU here: one worker, in-process
    prov = [json.loads(x) for x in (tmp_path / "run" / "provenance.jsonl").read_text().splitlines()]
    assert prov[-1]["workers"] == 1


@pytest.mark.parametrize("name", [n for n in ("cuda", "mps") if not (torch.cuda.is_available() if n == "cuda"
                                                                      else torch.backends.mps.is_available())])
def test_absent_device_fails_the_study_at_load_time(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["run", str(REPO / "studies" / "unet.yaml"), f"proxy.device={name}", f"output_dir={tmp_path / 'run'}",
              "--no-progress"])
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert e.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("error: ") and "proxy.device" in err[0] and f"{name} is not available" in err[0]
    assert list(tmp_path.iterdir()) == []


# ---- out of memory --------------------------------------------------------------------------------
OOM_STUDY = """\
name: oom
space: space.yaml
objectives: [{name: fd-fmnist}, {name: params}]
sampler: {name: random, seed: 0}
n_trials: 4
seed: 0
target: {latent_size: 8, context_len: 8}
early_stopping: {enabled: false}
output_dir: run
proxy:
  data_path: DATA
  steps: 4
  batch_size: 16
  num_samples: 100
  sample_steps: 2
  width_mult: 1.0
  depth_mult: 1.0
  ae: {steps: 10, batch_size: 16, eval_images: 100}
  classifier: {steps: 10, batch_size: 32, widths: [8, 16], feature_dim: 16}
"""


def test_out_of_memory_trial_fails_with_its_reason_and_the_study_goes_on(tmp_path, monkeypatch, proxy_cache):
    """The first three architectures run out of memory inside the model (simulated on the CPU by the
    model raising torch.OutOfMemoryError in its training forward): each is FAILED with the reason,
    its memory is released, and the worker goes on; three OOMs in a row do not end the study (they
    are properties of architectures, not a systematic failure), and the fourth trial completes."""
    from proxy_helpers import write_subset
    from snapgen.unet import SnapGenUNet

    data = write_subset(tmp_path / "fm", 1000, 200)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(TINY_UNET_SPACE)
    (tmp_path / "oom.yaml").write_text(OOM_STUDY.replace("DATA", str(data)))
    forward = SnapGenUNet.forward
    oomed, released = [], []

    def forward_that_runs_out(self, *a, **k):
        if self.training and torch.is_grad_enabled() and self not in [r() for r in oomed]:
            if len(oomed) < 3:  # the first three models to train
                oomed.append(weakref.ref(self))
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return forward(self, *a, **k)

    from snapgen.train import device as D

    real_release = D.release_memory

    def spy_release():
        released.append(1)
        real_release()

    monkeypatch.setattr(SnapGenUNet, "forward", forward_that_runs_out)
    monkeypatch.setattr(D, "release_memory", spy_release)
    assert main(["run", "oom.yaml", "--no-progress"]) == 0
    trials = sorted(load_run(tmp_path / "run").study.get_trials(deepcopy=False), key=lambda t: t.number)
    counted = [t for t in trials if not t.user_attrs.get("invalid")]
    assert [t.state for t in counted] == [TrialState.FAIL] * 3 + [TrialState.COMPLETE], [t.state for t in counted]
    for t in counted[:3]:
        assert t.user_attrs["fail_reason"] == "out of memory at batch 16 on cpu"
        rec = json.loads((tmp_path / "run" / "trials" / str(t.number) / "trial.json").read_text())
        assert rec["state"] == "FAIL" and rec["user_attrs"]["device"] == "cpu"
    done = counted[-1]
    rec = json.loads((tmp_path / "run" / "trials" / str(done.number) / "trial.json").read_text())
    assert rec["user_attrs"]["device"] == "cpu" and rec["proxy_result"]["device"] == "cpu"
    assert rec["proxy_result"]["precision"] == "fp32" and done.values[0] > 0
    assert len(released) >= 3
    gc.collect()
    assert [r() for r in oomed] == [None, None, None]  # the failed trials' models are gone


def test_oom_text_is_documented():
    text = (REPO / "docs" / "study.md").read_text() + (REPO / "docs" / "proxy.md").read_text()
    assert "workers: auto" in text and "out of memory at batch" in text


def test_promote_leaves_the_recipe_to_the_train_section(tiny_study, tmp_path, monkeypatch):
    """A study's proxy recipe, budget and device (lr, threads, device, ...) are not copied into the
    promoted training config, whose train section owns them (proxy.lr there would be an error)."""
    from archsearch.promote import promote

    monkeypatch.chdir(tmp_path)
    p = tiny_study(n_trials=3)
    assert main(["run", str(p), "proxy={lr: 0.003, threads: 1, device: cpu, grad_clip: 0.5, num_samples: 64}",
                 "--no-progress"]) == 0
    cfg, _ = promote(tmp_path / "run", pick="knee")
    assert cfg.proxy == {"num_samples": 64} and cfg.train.device == "auto"
