"""Shared pytest fixtures (add fixtures only)."""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

# A UNet space small enough that the full-size cost of an architecture is counted in well under a second.
TINY_UNET_SPACE = textwrap.dedent("""\
    kind: unet
    presets:
      tiny:
        arch:
          latent_channels: 4
          context_dim: 32
          head_dim: 16
          norm_groups: 8
          channels: [32, 64]
          layers: 1
          transformer_depth: [0, 1]
          cross_attention: [false, true]
    search:
      base: tiny
      dimensions:
        channels: {per_stage: true, choices: [[16, 32, 48], [32, 64, 80]]}
        transformer_depth: {per_stage: true, choices: [[0, 1], [1, 2]]}
        conv: {choices: [regular, separable, expanded_separable]}
        ffn_ratio: {choices: [2, 3, 4]}
        attention: {choices: [mhsa, mqa], when: has_attention}
    """)


def tiny_study_text(name: str = "tiny", n_trials: int = 8, extra: str = "") -> str:
    """A study over the tiny space with the ``synthetic`` quality metric (no training: seconds)."""
    return textwrap.dedent(f"""\
        name: {name}
        space: space.yaml
        objectives:
          - {{name: synthetic}}
          - {{name: params}}
          - {{name: gflops}}
        constraints: ["params <= 1.2e6"]
        sampler: {{name: tpe, seed: 0, options: {{n_startup_trials: 4, multivariate: true, group: true}}}}
        n_trials: {n_trials}
        target: {{latent_size: 8, context_len: 8}}
        synthetic: {{evals: 3, seconds_per_eval: 0.0}}
        early_stopping: {{enabled: true, min_trials: 3}}
        reference_point: {{synthetic: 80, params: 2.0e6, gflops: 0.05}}
        heartbeat: {{interval: 1, grace_period: 3}}
        output_dir: run
        """) + extra


@pytest.fixture
def tiny_study(tmp_path):
    """A factory writing the tiny space and a study file into tmp_path; returns the study path."""

    def make(**kw) -> Path:
        (tmp_path / "space.yaml").write_text(TINY_UNET_SPACE)
        p = tmp_path / f"{kw.get('name', 'tiny')}.yaml"
        p.write_text(tiny_study_text(**kw))
        return p

    return make


def run_tiny_study(d: Path, study_text: str) -> Path:
    """Run the tiny space's study ``study_text`` in ``d`` (as a user would, from that directory): its run directory."""
    from archsearch.cli import main

    d.mkdir(parents=True, exist_ok=True)
    (d / "space.yaml").write_text(TINY_UNET_SPACE)
    (d / "study.yaml").write_text(study_text)
    cwd = os.getcwd()
    os.chdir(d)
    try:
        assert main(["run", "study.yaml", "--no-progress"]) == 0
    finally:
        os.chdir(cwd)
    return d / "run"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished tiny study (synthetic quality, 10 trials): its run directory."""
    return run_tiny_study(tmp_path_factory.mktemp("tiny_run"), tiny_study_text(name="tiny", n_trials=10))


@pytest.fixture(scope="session")
def tiny_run_complete(tmp_path_factory) -> Path:
    """The tiny study without early stopping (10 complete trials, whatever the synthetic values): its run."""
    text = tiny_study_text(name="tiny", n_trials=10).replace("early_stopping: {enabled: true, min_trials: 3}",
                                                              "early_stopping: {enabled: false}")
    return run_tiny_study(tmp_path_factory.mktemp("tiny_run_complete"), text)


# ---- the proxy pipeline at test size (snapgen.proxy; see tests/proxy_helpers.py) -----------------
@pytest.fixture(scope="session")
def fmnist_small(tmp_path_factory) -> Path:
    """A Fashion-MNIST subset (the first images of the real splits) as IDX files, once per session."""
    from proxy_helpers import SMALL_TEST, SMALL_TRAIN, write_subset

    return write_subset(tmp_path_factory.mktemp("fmnist-small"), SMALL_TRAIN, SMALL_TEST)


@pytest.fixture(scope="session")
def proxy_cache_root(tmp_path_factory) -> Path:
    """One artefact cache (``$SNAPGEN_CACHE``) for the whole run; starts empty, like CI's. The xdist
    workers share it (their common base temp dir): the cache is content-addressed and locked, so the
    first worker to need the test-sized autoencoder, latents or classifier builds it and the other
    waits for it and loads it, as concurrent study workers do."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "snapgen-cache"
    root.mkdir(exist_ok=True)
    return root


@pytest.fixture
def proxy_cache(proxy_cache_root, monkeypatch) -> Path:
    """Point ``$SNAPGEN_CACHE`` at the session cache for one test."""
    monkeypatch.setenv("SNAPGEN_CACHE", str(proxy_cache_root))
    return proxy_cache_root


@pytest.fixture(scope="session")
def small_proxy_assets(fmnist_small, proxy_cache_root):
    """(config, assets) of the test-sized proxy: autoencoder, latents, classifier, text embeddings and
    reference statistics built once per session into the session cache."""
    from proxy_helpers import small_config
    from snapgen.proxy import prepare_assets

    cfg = small_config(fmnist_small)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SNAPGEN_CACHE", str(proxy_cache_root))
        assets = prepare_assets(cfg)
    return cfg, assets


@pytest.fixture
def small_proxy(small_proxy_assets, proxy_cache):
    """The test-sized :class:`snapgen.proxy.ProxyConfig`, its assets warm, the session cache active."""
    return small_proxy_assets[0]


# ---- scheduling ---------------------------------------------------------------------------------
def pytest_configure(config):
    """One torch thread per xdist worker: with one worker per core, torch's default (one thread per
    core in every worker) oversubscribes the CPU and the FLOP-counting tests ran ~2x slower."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


# Longest files first (measured with --durations): pytest-xdist (--dist loadfile, no reorder) hands
# files to its workers in collection order, so the file that trains a teacher and eight students
# (~6 min on one core) must not start last.
LONGEST_FIRST = ("test_train_claims.py", "test_arch_space.py", "test_arch_cost.py", "test_train.py",
                 "test_train_decoder_claim.py", "test_proxy.py", "test_study_run.py")


def pytest_collection_modifyitems(config, items):
    import torch

    if not torch.cuda.is_available():  # CUDA-only tests (marker `cuda`): skipped on CPU machines and CI
        skip = pytest.mark.skip(reason="needs a CUDA GPU (scripts/gpu_check.sh runs these)")
        for it in items:
            if it.get_closest_marker("cuda"):
                it.add_marker(skip)

    def weight(item):
        name = item.path.name
        if name in LONGEST_FIRST:
            return (0, LONGEST_FIRST.index(name))
        return (1 if item.get_closest_marker("slow") else 2, 0)

    file_weight = {}
    for it in items:
        file_weight[it.path] = min(file_weight.get(it.path, (9, 0)), weight(it))
    items.sort(key=lambda it: file_weight[it.path])  # stable: the order inside a file is kept
