"""A small Fashion-MNIST classifier whose penultimate features define the offline proxy metric.

Trained once per (data, config), cached by content hash with its held-out accuracy in
``report.json``. Inputs are images at the proxy autoencoder's resolution (default 32x32, the
28x28 originals zero-padded), so real and generated images are featurised identically.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from snapgen.autoencoder import fit_resolution
from snapgen.cache import atomic_path, atomic_write_json, cache_dir, combine, get_or_build, hash_config
from snapgen.data.base import LabelledImages


@dataclass(frozen=True)
class ClassifierConfig:
    resolution: int = 32
    widths: tuple[int, ...] = (16, 32, 64)
    feature_dim: int = 64
    steps: int = 450  # ~1 epoch of the 60k training images at batch 128
    batch_size: int = 128
    lr: float = 3e-3
    seed: int = 0
    norm: str = "batch"  # "batch" or "group" (GroupNorm(8), the first version's)
    pool: str = "flatten"  # "flatten": the last feature map, flattened (keeps *where*); "avg": global average
    hflip: bool = False  # random horizontal flips (slows fitting in a one-epoch budget)


class FMNISTClassifier(nn.Module):
    """conv-norm-ReLU + 2x2 max-pool per width, the last map flattened (or averaged), a linear feature
    layer (ReLU; the metric's features) and the class head."""

    def __init__(self, cfg: ClassifierConfig, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        layers, c = [], in_channels
        for w in cfg.widths:
            norm = nn.BatchNorm2d(w) if cfg.norm == "batch" else nn.GroupNorm(8, w)
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=cfg.norm != "batch"), norm, nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c = w
        self.body = nn.Sequential(*layers)
        self.pool = cfg.pool
        side = cfg.resolution // 2 ** len(cfg.widths)
        self.features = nn.Linear(c * side * side if cfg.pool == "flatten" else c, cfg.feature_dim)
        self.head = nn.Linear(cfg.feature_dim, num_classes)
        self.resolution = cfg.resolution
        self.in_channels = in_channels

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div(127.5).sub(1.0) if images.dtype == torch.uint8 else images.float()
        if x.shape[1] != self.in_channels:
            x = x.mean(1, keepdim=True) if self.in_channels == 1 else x.expand(-1, self.in_channels, -1, -1)
        return fit_resolution(x, self.resolution)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        h = h.flatten(1) if self.pool == "flatten" else h.mean((2, 3))
        f = F.relu(self.features(h))
        return f, self.head(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[1]


def _train(cfg: ClassifierConfig, train: LabelledImages, test: LabelledImages, out) -> None:
    """Trained by the engine on the CPU (a cached asset must not depend on the machine that built it)."""
    from snapgen.train.batches import RandomBatches
    from snapgen.train.engine import Engine, Progress, Recipe

    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    model = FMNISTClassifier(cfg, train.channels, train.num_classes)

    def flip(batch, gen):  # random horizontal flips, drawn from the data stream's generator
        x = batch["x"]
        return {**batch, "x": torch.where(torch.rand(len(x), 1, 1, 1, generator=gen) < 0.5, x, x.flip(-1))}

    def cross_entropy(net, batch, step):
        return F.cross_entropy(net(batch["x"]), batch["y"]), {}

    batches = RandomBatches({"x": model.prepare(train.images), "y": train.labels}, cfg.batch_size, generator=g,
                            transform=flip if cfg.hflip else None)
    t0 = time.time()
    Engine(model, cross_entropy, batches, Recipe(steps=cfg.steps, lr=cfg.lr, schedule="cosine", weight_decay=1e-4,
                                                 check_every=cfg.steps),
           hooks=[Progress(cfg.steps, "metric classifier (once)")], lr_key="classifier.lr",
           batch_size=cfg.batch_size).run()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(model.prepare(test.images[i:i + 1000])).argmax(1) for i in range(0, len(test), 1000)])
    acc = float((pred == test.labels).float().mean())
    with atomic_path(out / "classifier.pt") as tmp:
        torch.save(model.state_dict(), tmp)
    atomic_write_json(out / "report.json", {"test_accuracy": acc, "train_seconds": time.time() - t0,
                                            "config": asdict(cfg), "data_hash": train.content_hash,
                                            "num_classes": train.num_classes, "in_channels": train.channels})


def metric_classifier(cfg: ClassifierConfig, train: LabelledImages, test: LabelledImages):
    """(weights path, report) of the cached classifier, training it on a cache miss."""
    key = combine(train.content_hash, test.content_hash, hash_config(cfg))
    d = cache_dir("classifier", key)
    built = {"trained": False}

    def build():
        _train(cfg, train, test, d)
        built["trained"] = True

    get_or_build(d / "report.json", build)  # report.json is written last: it marks a complete entry
    report = json.loads((d / "report.json").read_text())
    report["cache_hit"] = not built["trained"]
    report["key"] = key
    return d / "classifier.pt", report


def load_classifier(weights_path, cfg: ClassifierConfig, in_channels: int = 1, num_classes: int = 10):
    model = FMNISTClassifier(cfg, in_channels, num_classes)
    model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    return model.eval().requires_grad_(False)
