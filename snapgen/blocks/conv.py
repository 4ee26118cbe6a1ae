"""Convolution types of the search space: ``regular``, ``separable``, ``expanded_separable`` and
``inverted_bottleneck``. A conv registered with ``expansion=True`` takes the stage's ``conv_expansion``."""
from __future__ import annotations

import torch.nn as nn

from snapgen.blocks.registry import CONV


@CONV.register("regular")
def regular_conv(cin: int, cout: int, kernel: int = 3, stride: int = 1, expansion: float = 2.0) -> nn.Module:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2)


class SeparableConv(nn.Sequential):
    """Depthwise k x k followed by pointwise 1 x 1 (MobileNet's SepConv)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, expansion: float = 2.0):
        super().__init__(
            nn.Conv2d(cin, cin, kernel, stride=stride, padding=kernel // 2, groups=cin),
            nn.Conv2d(cin, cout, 1),
        )


class ExpandedSeparableConv(nn.Sequential):
    """Depthwise -> pointwise expanding to ``expansion * cout`` -> SiLU -> pointwise back to ``cout``.

    The paper's step (c) (UIB-like). The expansion is taken relative to the *output* width:
    with it relative to the input, the up-path blocks (whose input is the skip concatenation,
    twice as wide) would grow instead of shrink, and the ladder's -15% params / -27% FLOPs for
    step (c) are reproduced with the output-relative reading.
    """

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, expansion: float = 2.0):
        mid = max(1, int(round(cout * expansion)))
        super().__init__(
            nn.Conv2d(cin, cin, kernel, stride=stride, padding=kernel // 2, groups=cin),
            nn.Conv2d(cin, mid, 1),
            nn.SiLU(),
            nn.Conv2d(mid, cout, 1),
        )


class InvertedBottleneckConv(nn.Sequential):
    """MobileNetV2's inverted residual body: pointwise expansion to ``expansion * cout`` -> SiLU ->
    depthwise k x k (the stride) -> SiLU -> pointwise projection to ``cout`` (no activation after it).
    The expansion is relative to the output width, as for ``expanded_separable``."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, expansion: float = 2.0):
        mid = max(1, int(round(cout * expansion)))
        super().__init__(
            nn.Conv2d(cin, mid, 1),
            nn.SiLU(),
            nn.Conv2d(mid, mid, kernel, stride=stride, padding=kernel // 2, groups=mid),
            nn.SiLU(),
            nn.Conv2d(mid, cout, 1),
        )


CONV.register("separable")(SeparableConv)
CONV.register("expanded_separable", expansion=True)(ExpandedSeparableConv)
CONV.register("inverted_bottleneck", expansion=True)(InvertedBottleneckConv)
