"""The decoder study: psnr of a proxy decoder trained against a frozen proxy encoder, end to end."""
from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import TrialState

from archsearch.cli import main
from archsearch.study.pareto import load_run

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_decoder_study_psnr(tmp_path, monkeypatch):
    monkeypatch.setenv("SNAPGEN_CACHE", str(tmp_path / "cache"))  # a tiny autoencoder of its own
    monkeypatch.chdir(tmp_path)
    tiny_ae = "{steps: 20, block_out_channels: [8, 8, 8, 8], norm_num_groups: 4, eval_images: 100}"
    assert main(["run", str(REPO / "studies" / "decoder.yaml"), "n_trials=2", "timeout=null",
                 "proxy.steps=6", "proxy.eval_every=3", "proxy.num_samples=64", "proxy.batch_size=16",
                 "proxy.width_mult=0.125", "proxy.train_images=2000", f"proxy.ae={tiny_ae}", "target.latent_size=8",
                 "output_dir=run", "--no-progress"]) == 0
    run = load_run(tmp_path / "run")
    done = [t for t in run.study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    assert done, [t.user_attrs.get("pruned_reason") for t in run.study.get_trials(deepcopy=False)]
    for t in done:
        assert run.study.metric_names[0] == "psnr" and 0 < t.values[0] < 60
        assert [s for s, _ in t.user_attrs["evals"]] == [3, 6]
