"""The in-memory labelled image set every proxy data source produces."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class LabelledImages:
    """Images as a uint8 tensor (N, C, H, W), integer labels (N,), class names and a content hash
    (sha256 over the source bytes, used as a cache key by everything derived from the data)."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    content_hash: str
    source: str = ""

    def __post_init__(self):
        assert self.images.dtype == torch.uint8 and self.images.ndim == 4, "images must be uint8 (N, C, H, W)"
        assert self.labels.ndim == 1 and len(self.labels) == len(self.images), "one label per image"

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def resolution(self) -> int:
        return self.images.shape[-1]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    def to_float(self, images: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 [0, 255] -> float [-1, 1]."""
        x = self.images if images is None else images
        return x.float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255] (rounded, clamped)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
