"""The proxy entry point: determinism, cache reuse and invalidation, early stopping, failure modes,
and (slow) quality on a test-sized proxy: untrained vs trained, improving budgets.

Everything runs on Fashion-MNIST subsets with small autoencoder / classifier runs, built once per
session into a session cache (conftest ``proxy_cache`` / ``small_proxy``), so the suite starts from
an empty cache like CI and needs no user cache. The default-budget numbers in docs/proxy.md come
from ``scripts/proxy_budgets.py``, not from tests."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from proxy_helpers import SMALL_BUDGETS, SMALL_TRAIN, small_spec, tiny_config, write_subset
from snapgen import proxy
from snapgen.errors import TrainingError, UserError
from snapgen.proxy import ProxyConfig, StopTrial, prepare_assets, proxy_spec, run_proxy


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_subset(tmp_path_factory.mktemp("fm"), 1000, 200)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """A fresh, empty artefact cache."""
    monkeypatch.setenv("SNAPGEN_CACHE", str(tmp_path / "cache"))
    proxy._ASSETS.clear()
    yield tmp_path / "cache"
    proxy._ASSETS.clear()


@pytest.fixture
def tiny(data_dir, proxy_cache):
    """The seconds-sized config; its assets are built once into the session cache."""
    return tiny_config(data_dir)


@pytest.mark.slow  # ~30-60 s: builds tiny assets three times in a fresh cache
def test_caches_reused_and_invalidated_by_data_and_config(data_dir, tmp_path, tmp_cache):
    """Tiny assets (seconds): built on a miss, reused from disk by a 'new process', rebuilt when the
    data or the autoencoder config changes (the classifier only when its own inputs change)."""
    cfg = tiny_config(data_dir, eval_at=(4,))
    seen = []
    r1 = run_proxy(small_spec(), cfg, seed=3, on_eval=lambda s, v: seen.append((s, v)))
    assert r1.assets["autoencoder_cache_hit"] is False and r1.assets["classifier_cache_hit"] is False
    assert r1.assets["latents_cache_hit"] is False
    assert [s for s, _ in r1.evaluations] == [4, 8] and seen == list(r1.evaluations) and r1.steps == 8
    assert r1.metric == "fd-fmnist" and r1.value > 0 and r1.samples.shape == (100, 1, 32, 32)
    assert 0 < r1.assets["autoencoder_psnr_db"] < 60
    proxy._ASSETS.clear()  # a new process: only the disk cache remains
    r2 = run_proxy(small_spec(), cfg, seed=3)
    assert r2.assets["autoencoder_cache_hit"] and r2.assets["classifier_cache_hit"] and r2.assets["latents_cache_hit"]
    assert abs(r1.value - r2.value) <= 1e-6 and r1.evaluations == r2.evaluations
    # changing the autoencoder config invalidates the autoencoder and the latents, not the classifier
    proxy._ASSETS.clear()
    r3 = run_proxy(small_spec(), replace(cfg, ae=replace(cfg.ae, steps=11)), seed=3)
    assert not r3.assets["autoencoder_cache_hit"] and not r3.assets["latents_cache_hit"]
    assert r3.assets["classifier_cache_hit"]
    # changing the data (a different subset) invalidates everything built from it
    other = write_subset(tmp_path / "other", 900, 200)
    r4 = run_proxy(small_spec(), replace(cfg, data_path=str(other)), seed=3)
    assert not r4.assets["autoencoder_cache_hit"] and not r4.assets["latents_cache_hit"]
    assert not r4.assets["classifier_cache_hit"] and r4.assets["train_images"] == 900


# ---- behaviour of the test-sized proxy (assets built once per session: conftest small_proxy) ----
@pytest.mark.slow
def test_untrained_is_worse_and_increasing_budgets_improve(small_proxy):
    # The lr schedule is warm-up + constant and the RNG stream is per step, so an evaluation at step
    # k of a longer run equals a run with budget k (the multi-fidelity evaluations are true budgets).
    b1, b2, b3 = SMALL_BUDGETS
    untrained = run_proxy(small_spec(), replace(small_proxy, steps=0), seed=0)
    r = run_proxy(small_spec(), replace(small_proxy, steps=b3, eval_at=(b1, b2)), seed=0)
    vals = [v for _, v in r.evaluations]
    assert [s for s, _ in r.evaluations] == [b1, b2, b3] and r.steps == b3
    assert untrained.steps == 0 and untrained.evaluations[0][0] == 0
    assert untrained.value > 1.25 * vals[0], (untrained.value, vals)  # measured 318 vs 215
    assert vals[0] > vals[1] > vals[2], vals  # measured 215 > 196 > 174
    assert untrained.value > 1.5 * vals[2], (untrained.value, vals)
    assert r.final_loss < 1.0 and r.images_per_second > 0 and r.train_seconds > 0


@pytest.mark.slow
def test_small_assets_are_sound(small_proxy_assets):
    """The session's test-sized autoencoder and classifier work (numbers, not just files)."""
    cfg, assets = small_proxy_assets
    info = assets.info
    assert info["autoencoder_psnr_db"] > 15, info  # measured 17.1 dB
    assert info["classifier_accuracy"] > 0.6, info  # measured 0.82; chance is 0.1
    assert info["train_images"] == SMALL_TRAIN and assets.latents.shape == (SMALL_TRAIN, 4, 8, 8)
    lat = assets.latents
    assert abs(float(lat.mean())) < 0.1 and abs(float(lat.std()) - 1) < 0.1  # normalised latents


@pytest.mark.slow
def test_same_seed_same_metric(small_proxy):
    cfg = replace(small_proxy, steps=10, num_samples=100)
    r1 = run_proxy(small_spec(), cfg, seed=3)
    proxy._ASSETS.clear()  # as in a new process: assets come back from the disk cache
    r2 = run_proxy(small_spec(), cfg, seed=3)
    assert r2.assets["autoencoder_cache_hit"] and r2.assets["classifier_cache_hit"] and r2.assets["latents_cache_hit"]
    assert abs(r1.value - r2.value) <= 1e-6 and torch.equal(r1.samples, r2.samples)
    r3 = run_proxy(small_spec(), cfg, seed=4)
    assert abs(r3.value - r1.value) > 1e-6


def test_proxy_spec_uses_proxy_latents_and_text_width(tiny):
    cfg = tiny
    assets = prepare_assets(cfg)
    s = proxy_spec(small_spec(), cfg, latent_channels=assets.latents.shape[1], context_dim=assets.context.shape[-1])
    assert s.latent_channels == 4 and s.context_dim == 384 and s.head_dim == cfg.head_dim == 8 and s.norm_groups == 8
    assert [st.channels for st in s.stages] == [32, 64] and s.name == "tiny-proxy"
    assert assets.context.shape[0] == 11  # 10 class prompts + the empty prompt (CFG null condition)


def test_stop_trial_stops_early(tiny):
    cfg = replace(tiny, steps=12, eval_every=4)

    def stop(step, value):
        if step == 4:
            raise StopTrial()

    r = run_proxy(small_spec(), cfg, seed=0, on_eval=stop)
    assert r.stopped_early and r.steps == 4 and len(r.evaluations) == 1
    r = run_proxy(small_spec(), cfg, seed=0, on_eval=lambda s, v: s >= 8)
    assert r.stopped_early and r.steps == 8 and [s for s, _ in r.evaluations] == [4, 8]


def test_non_finite_loss_is_a_training_error_not_a_metric(tiny, monkeypatch):
    cfg = tiny
    good = prepare_assets(cfg)
    bad = replace(good, latents=torch.full_like(good.latents, float("nan")))
    monkeypatch.setattr(proxy, "prepare_assets", lambda c: bad)
    called = []
    with pytest.raises(TrainingError, match="non-finite loss"):
        run_proxy(small_spec(), cfg, seed=0, on_eval=lambda s, v: called.append(v))
    assert called == []


def test_config_errors_are_user_errors():
    with pytest.raises(UserError, match="sampler"):
        run_proxy(small_spec(), ProxyConfig(sampler="ddim"))
    with pytest.raises(UserError, match="fd-fmnist is defined on Fashion-MNIST only"):
        run_proxy(small_spec(), ProxyConfig(dataset="imagefolder", data_path="/x"))


def test_cli_json(tiny, monkeypatch, capsys):
    """``snapgen proxy --json`` prints one JSON object (in-process, on the tiny config as defaults)."""
    from snapgen.cli import main

    monkeypatch.setattr(proxy, "ProxyConfig", lambda: tiny)  # the command's defaults
    assert main(["proxy", "--preset", "a", "--steps", "5", "--json", "--no-progress"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["metric"] == "fd-fmnist" and obj["steps"] == 5 and obj["value"] > 0 and obj["seconds"] > 0
    assert obj["evaluations"][-1][0] == 5 and obj["spec"]["name"].endswith("-proxy")


def test_default_config_is_the_documented_one():
    """The defaults a study uses are the ones docs/proxy.md measures (scripts/proxy_budgets.py)."""
    from pathlib import Path

    cfg = ProxyConfig()
    assert (cfg.steps, cfg.batch_size, cfg.num_samples, cfg.sample_steps) == (120, 64, 500, 8)
    doc = (Path(__file__).resolve().parents[1] / "docs" / "proxy.md").read_text()
    assert "scripts/proxy_budgets.py" in doc and "**120 steps**" in doc
