"""Quality metrics through torch-fidelity.

* ``fid`` — Fréchet Inception Distance with torch-fidelity's ``inception-v3-compat`` extractor;
  ``weights_path`` points at its weights file where the internet (torch-fidelity's own download) is
  unreachable.
* ``fd-fmnist`` — the offline proxy metric: the Fréchet distance in the feature space of this
  project's small Fashion-MNIST classifier (:mod:`snapgen.metrics.classifier`), registered with
  torch-fidelity as the feature extractor ``fd-fmnist``. It is *not* Inception FID and its values
  are not comparable to FID numbers in papers.

Reference statistics are cached by torch-fidelity itself (``input2_cache_name`` under
``cache_root``), keyed here by the reference data hash and the extractor's identity.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import torch

from snapgen.cache import cache_dir
from snapgen.errors import UserError

FD_FMNIST = "fd-fmnist"
FID = "fid"

_fe_registered = False


def _register() -> None:
    """Register the ``fd-fmnist`` extractor with torch-fidelity (once per process)."""
    global _fe_registered
    if _fe_registered:
        return
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    from snapgen.metrics.classifier import ClassifierConfig, load_classifier

    class FeatureExtractorFMNIST(FeatureExtractorBase):
        """torch-fidelity extractor over the project's Fashion-MNIST classifier.
        Features: ``features`` (penultimate, used for the Fréchet distance) and ``logits``."""

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            if feature_extractor_weights_path is None:
                raise UserError(f"{FD_FMNIST} needs feature_extractor_weights_path (the cached classifier)")
            path = Path(feature_extractor_weights_path)
            report = json.loads((path.parent / "report.json").read_text())
            cfg = {"norm": "group", "pool": "avg", **report["config"]}  # entries older than these fields
            cfg = ClassifierConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
            self.model = load_classifier(path, cfg, report["in_channels"], report["num_classes"])

        @staticmethod
        def get_provided_features_list():
            return "features", "logits"

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"fid": "features", "kid": "features", "prc": "features", "isc": "logits"}[metric]

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 1, 32, 32, dtype=torch.uint8)

        def forward(self, x):
            feats, logits = self.model.forward_features(self.model.prepare(x))
            out = {"features": feats.double(), "logits": logits.double()}
            return tuple(out[f] for f in self.features_list)

    if FD_FMNIST not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(FD_FMNIST, FeatureExtractorFMNIST)
    _fe_registered = True


class _Images(torch.utils.data.Dataset):
    """uint8 (N, C, H, W) images as a torch-fidelity input; grey images get 3 channels for Inception."""

    def __init__(self, images: torch.Tensor, rgb: bool):
        if images.dtype != torch.uint8:
            raise TypeError("images must be uint8")
        self.images = images.expand(-1, 3, -1, -1) if rgb and images.shape[1] == 1 else images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def frechet_distance(generated: torch.Tensor, reference: torch.Tensor, *, metric: str = FD_FMNIST,
                     weights_path: str | Path | None = None, reference_key: str | None = None,
                     batch_size: int = 500, device: torch.device | str = "cpu") -> float:
    """Fréchet distance between two uint8 image sets in the feature space named by ``metric``.

    ``reference_key`` (a hash of the reference images and the extractor) turns on torch-fidelity's
    statistics cache for the reference set; generated images are never cached. The features are
    extracted on ``device`` where torch-fidelity can (its ``cuda`` option, on that GPU); elsewhere
    (CPU, MPS) on the CPU."""
    import torch_fidelity

    if metric == FD_FMNIST:
        _register()
        extractor = FD_FMNIST
    elif metric == FID:
        extractor = "inception-v3-compat"
        if weights_path is not None and not Path(weights_path).is_file():
            raise UserError("Inception weights file not found", file=str(weights_path), key="inception_weights")
    else:
        raise UserError(f"unknown metric {metric!r}; allowed: {FD_FMNIST}, {FID}", key="metric")
    rgb = metric == FID
    device = torch.device(device)
    kwargs = dict(
        input1=_Images(generated, rgb), input2=_Images(reference, rgb), fid=True, feature_extractor=extractor,
        feature_extractor_weights_path=None if weights_path is None else str(weights_path),
        cuda=device.type == "cuda", batch_size=batch_size, save_cpu_ram=True, verbose=False,
        cache_root=str(cache_dir("fidelity")), cache=reference_key is not None,
        input2_cache_name=None if reference_key is None else f"{metric}-ref-{reference_key}",
    )
    # torch-fidelity prints a few progress lines to stdout even when quiet; keep stdout clean for --json.
    try:
        on_gpu = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
        with contextlib.redirect_stdout(io.StringIO()), on_gpu:
            out = torch_fidelity.calculate_metrics(**kwargs)
    except (OSError, RuntimeError) as e:
        if metric == FID and weights_path is None:  # torch-fidelity's weight download failed (offline)
            raise UserError(f"cannot fetch torch-fidelity's Inception weights ({type(e).__name__}); "
                            "pass a local weights file (inception_weights)", key="inception_weights") from None
        raise
    return float(out["frechet_inception_distance"])
