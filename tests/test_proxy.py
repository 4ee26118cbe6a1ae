"""The proxy entry point: determinism, cache reuse, early stopping, failure modes, and (slow) the
numbers the README shows: untrained vs trained, improving budgets, time per evaluation."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch

from proxy_helpers import small_spec, tiny_config, write_subset
from snapgen import proxy
from snapgen.errors import TrainingError, UserError
from snapgen.proxy import ProxyConfig, StopTrial, prepare_assets, proxy_spec, run_proxy


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_subset(tmp_path_factory.mktemp("fm"), 2000, 500)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """A fresh, empty artefact cache."""
    monkeypatch.setenv("SNAPGEN_CACHE", str(tmp_path / "cache"))
    proxy._ASSETS.clear()
    yield tmp_path / "cache"
    proxy._ASSETS.clear()


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One artefact cache for the tests that only need the tiny assets built once."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SNAPGEN_CACHE", str(tmp_path_factory.mktemp("cache")))
        proxy._ASSETS.clear()
        yield
        proxy._ASSETS.clear()


@pytest.mark.slow  # ~30-70 s on the shared 2-core machine: builds the tiny assets three times
def test_same_seed_same_metric_and_caches_reused(data_dir, tmp_cache):
    cfg = tiny_config(data_dir, eval_at=(4,))
    seen = []
    r1 = run_proxy(small_spec(), cfg, seed=3, on_eval=lambda s, v: seen.append((s, v)))
    assert r1.assets["autoencoder_cache_hit"] is False and r1.assets["classifier_cache_hit"] is False
    assert r1.assets["latents_cache_hit"] is False
    assert [s for s, _ in r1.evaluations] == [4, 8] and seen == list(r1.evaluations) and r1.steps == 8
    assert r1.metric == "fd-fmnist" and r1.value > 0 and r1.samples.shape == (100, 1, 32, 32)
    proxy._ASSETS.clear()  # a new process: only the disk cache remains
    r2 = run_proxy(small_spec(), cfg, seed=3)
    assert r2.assets["autoencoder_cache_hit"] and r2.assets["classifier_cache_hit"] and r2.assets["latents_cache_hit"]
    assert abs(r1.value - r2.value) <= 1e-6 and r1.evaluations == r2.evaluations
    r3 = run_proxy(small_spec(), cfg, seed=4)
    assert r3.value != r1.value
    # changing the autoencoder config invalidates the autoencoder and the latents, not the classifier
    proxy._ASSETS.clear()
    r4 = run_proxy(small_spec(), replace(cfg, ae=replace(cfg.ae, steps=11)), seed=3)
    assert not r4.assets["autoencoder_cache_hit"] and not r4.assets["latents_cache_hit"]
    assert r4.assets["classifier_cache_hit"]
    assert 0 < r1.assets["autoencoder_psnr_db"] < 60


def test_proxy_spec_uses_proxy_latents_and_text_width(data_dir, shared_cache):
    cfg = tiny_config(data_dir)
    assets = prepare_assets(cfg)
    s = proxy_spec(small_spec(), cfg, latent_channels=assets.latents.shape[1], context_dim=assets.context.shape[-1])
    assert s.latent_channels == 4 and s.context_dim == 384 and s.head_dim == 16 and s.norm_groups == 8
    assert [st.channels for st in s.stages] == [32, 64] and s.name == "tiny-proxy"
    assert assets.context.shape[0] == 11  # 10 class prompts + the empty prompt (CFG null condition)


def test_stop_trial_stops_early(data_dir, shared_cache):
    cfg = tiny_config(data_dir, steps=12, eval_every=4)

    def stop(step, value):
        if step == 4:
            raise StopTrial()

    r = run_proxy(small_spec(), cfg, seed=0, on_eval=stop)
    assert r.stopped_early and r.steps == 4 and len(r.evaluations) == 1
    r = run_proxy(small_spec(), cfg, seed=0, on_eval=lambda s, v: s >= 8)
    assert r.stopped_early and r.steps == 8 and [s for s, _ in r.evaluations] == [4, 8]


def test_non_finite_loss_is_a_training_error_not_a_metric(data_dir, shared_cache, monkeypatch):
    cfg = tiny_config(data_dir)
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


# ---- the numbers (default configuration, the user cache; slow) -----------------------------------
@pytest.fixture(scope="module")
def preset_a():
    from snapgen.presets import load_preset

    return load_preset(None, "a")


@pytest.mark.slow
def test_default_proxy_separates_quality_and_fits_the_time_budget(preset_a):
    prepare_assets(ProxyConfig())  # warm caches (builds them once on a fresh machine)
    untrained = run_proxy(preset_a, replace(ProxyConfig(), steps=0), seed=0)
    t0 = time.perf_counter()
    trained = run_proxy(preset_a, ProxyConfig(), seed=0)
    wall = time.perf_counter() - t0
    assert wall <= 180 and trained.seconds <= 180
    assert untrained.value > 3 * trained.value, (untrained.value, trained.value)


@pytest.mark.slow
def test_increasing_budgets_improve_the_metric(preset_a):
    # The lr schedule is warm-up + constant and the RNG stream is per step, so an evaluation at step
    # k of a longer run equals a run with budget k (the multi-fidelity evaluations are true budgets).
    cfg = replace(ProxyConfig(), steps=360, eval_at=(40, 120))
    r = run_proxy(preset_a, cfg, seed=0)
    vals = [v for _, v in r.evaluations]
    assert [s for s, _ in r.evaluations] == [40, 120, 360]
    assert vals[0] > vals[1] > vals[2], vals


@pytest.mark.slow
def test_cli_json(preset_a):
    out = subprocess.run([sys.executable, "-m", "snapgen.cli", "proxy", "--preset", "a", "--steps", "50", "--json",
                          "--no-progress"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    obj = json.loads(out.stdout)
    assert obj["metric"] == "fd-fmnist" and obj["steps"] == 50 and obj["value"] > 0 and obj["seconds"] > 0
