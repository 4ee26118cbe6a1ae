"""Shared helpers for the proxy tests: small IDX data sets and tiny, fast proxy configs."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from snapgen.data.fashion_mnist import DEBIAN_DIR, FILES
from snapgen.data.idx import read_idx


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False) -> Path:
    arr = np.ascontiguousarray(array, dtype=np.uint8)
    raw = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw, mtime=0))
    else:
        path.write_bytes(raw)
    return path


def write_subset(directory: Path, n_train: int = 2000, n_test: int = 500, *, gz: bool = False) -> Path:
    """The first images of the real Fashion-MNIST splits, as a small IDX directory."""
    directory.mkdir(parents=True, exist_ok=True)
    for (split, kind), base in FILES.items():
        src = DEBIAN_DIR / f"{base}.gz"
        arr = read_idx(src)[: n_train if split == "train" else n_test]
        write_idx(directory / base, arr, gz=gz)
    return directory


def tiny_config(data_dir, **over):
    """A proxy configuration that runs in seconds (tiny AE, classifier, budget)."""
    from dataclasses import replace

    from snapgen.autoencoder import AEConfig
    from snapgen.metrics import ClassifierConfig
    from snapgen.proxy import ProxyConfig

    cfg = ProxyConfig(steps=8, batch_size=16, num_samples=100, sample_steps=2, data_path=str(data_dir),
                      ae=AEConfig(steps=10, batch_size=16, eval_images=100),
                      classifier=ClassifierConfig(steps=10, batch_size=32, widths=(8, 16), feature_dim=16),
                      progress=False)
    return replace(cfg, **over)


# The test-sized proxy: a Fashion-MNIST subset, a short autoencoder and classifier run, a tiny UNet.
# Built once per session (conftest ``small_proxy``): ~1-3 min on the shared 2-core CPU.
SMALL_TRAIN, SMALL_TEST = 6000, 1000
SMALL_BUDGETS = (15, 40, 120)  # the increasing budgets the quality tests compare


def small_config(data_dir, **over):
    """A proxy configuration small enough for CI whose metric still separates quality."""
    from dataclasses import replace

    from snapgen.autoencoder import AEConfig
    from snapgen.metrics import ClassifierConfig
    from snapgen.proxy import ProxyConfig

    # lr 3e-3 and EMA 0.9: the tiny UNet must learn visibly within 15..120 steps.
    # Measured (load ~15 on 2 cores): untrained 318, 15 steps 215, 40 steps 196, 120 steps 174 (fd-fmnist);
    # autoencoder PSNR 17.1 dB, classifier accuracy 82%.
    cfg = ProxyConfig(steps=SMALL_BUDGETS[-1], batch_size=32, lr=3e-3, ema_decay=0.9, num_samples=200, sample_steps=4,
                      data_path=str(data_dir),
                      ae=AEConfig(steps=120, batch_size=32, lr=4e-3, eval_images=500),
                      classifier=ClassifierConfig(steps=150, batch_size=64, widths=(8, 16, 32), feature_dim=32),
                      progress=False)
    return replace(cfg, **over)


def small_spec():
    from snapgen.spec import ArchSpec, StageSpec

    return ArchSpec(stages=(StageSpec(256, layers=1, transformer_depth=0, cross_attention=False),
                            StageSpec(512, layers=1, transformer_depth=1)), name="tiny", context_dim=768)
