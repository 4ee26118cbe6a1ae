"""The proxy metric: cached classifier, torch-fidelity registration, Fréchet distances."""
from __future__ import annotations

import pytest
import torch

from snapgen.data import fashion_mnist as fm
from snapgen.errors import UserError
from snapgen.metrics import ClassifierConfig, frechet_distance, metric_classifier

CFG = ClassifierConfig(steps=60, batch_size=32, widths=(8, 16), feature_dim=16)


@pytest.fixture(scope="module")
def small_data(fmnist_small):
    return fm.load("train", fmnist_small), fm.load("test", fmnist_small)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SNAPGEN_CACHE", str(tmp_path / "cache"))


@pytest.mark.slow  # trains three tiny classifiers (~20-50 s)
def test_classifier_cached_and_invalidated(small_data, tmp_cache):
    train, test = small_data
    w1, r1 = metric_classifier(CFG, train, test)
    assert not r1["cache_hit"] and w1.is_file() and r1["test_accuracy"] > 0.4  # chance is 0.1
    w2, r2 = metric_classifier(CFG, train, test)
    assert r2["cache_hit"] and w2 == w1 and r2["test_accuracy"] == r1["test_accuracy"]
    w3, r3 = metric_classifier(ClassifierConfig(steps=61, batch_size=32, widths=(8, 16), feature_dim=16), train, test)
    assert not r3["cache_hit"] and w3 != w1  # a config change retrains
    sub = fm.LabelledImages(train.images[:1000], train.labels[:1000], train.class_names, "other-data-hash")
    _, r4 = metric_classifier(CFG, sub, test)
    assert not r4["cache_hit"]  # a data change retrains


def test_fd_fmnist_separates_real_from_noise(small_data, proxy_cache):
    import torch_fidelity.registry as reg

    train, test = small_data
    weights, _ = metric_classifier(CFG, train, test)
    pad = lambda x: torch.nn.functional.pad(x, (2, 2, 2, 2))  # 28 -> 32 like the proxy images
    real_a, real_b = pad(train.images[:500]), pad(test.images[:500])
    noise = torch.randint(0, 256, real_a.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    blur = torch.nn.functional.avg_pool2d(real_b.float(), 3, 1, 1).round().to(torch.uint8)
    blurred = frechet_distance(blur, real_a, weights_path=weights, reference_key="k1")
    same = frechet_distance(real_a, real_a, weights_path=weights)
    real = frechet_distance(real_b, real_a, weights_path=weights, reference_key="k1")
    bad = frechet_distance(noise, real_a, weights_path=weights, reference_key="k1")  # cached reference stats
    assert "fd-fmnist" in reg.FEATURE_EXTRACTORS_REGISTRY
    assert abs(same) < 1e-6 and real < blurred < bad and real < bad / 5, (same, real, blurred, bad)


def test_unknown_metric_and_missing_inception_weights(tmp_path):
    x = torch.zeros(4, 1, 32, 32, dtype=torch.uint8)
    with pytest.raises(UserError, match="unknown metric"):
        frechet_distance(x, x, metric="is")
    with pytest.raises(UserError, match="Inception weights file not found"):
        frechet_distance(x, x, metric="fid", weights_path=tmp_path / "missing.pth")
