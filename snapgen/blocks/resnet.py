"""Residual block, down/up sampling."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from snapgen.blocks.registry import CONV, NORM


class ResBlock(nn.Module):
    """norm -> SiLU -> conv -> (+ time embedding) -> norm -> SiLU -> conv, plus the shortcut.

    ``conv_shortcut=False`` removes the 1x1 projection: blocks that keep their width stay
    residual, blocks that change it become plain (the tiny decoder lets its upsampling layer
    carry the channel transition instead, paper §3.2).
    """

    def __init__(self, cin: int, cout: int, *, temb_dim: int = 0, conv: str = "regular", expansion: float = 2.0,
                 norm: str = "groupnorm", norm_groups: int = 32, conv_shortcut: bool = True, eps: float = 1e-5):
        super().__init__()
        self.norm1 = NORM.build(norm, cin, norm_groups, eps)
        self.conv1 = CONV.build(conv, cin, cout, expansion=expansion)
        self.temb_proj = nn.Linear(temb_dim, cout) if temb_dim else None
        self.norm2 = NORM.build(norm, cout, norm_groups, eps)
        self.conv2 = CONV.build(conv, cout, cout, expansion=expansion)
        if cin == cout:
            self.shortcut, self.residual = nn.Identity(), True
        elif conv_shortcut:
            self.shortcut, self.residual = nn.Conv2d(cin, cout, 1), True
        else:
            self.shortcut, self.residual = None, False

    def forward(self, x, context=None, temb=None):
        h = self.add_temb(self.conv1(F.silu(self.norm1(x))), temb)
        return self.add_shortcut(x, self.conv2(F.silu(self.norm2(h))))

    # The glue around the two convs (the latency ``resadd`` unit times these two methods).
    def add_temb(self, h, temb):
        return h + self.temb_proj(F.silu(temb))[:, :, None, None] if self.temb_proj is not None and temb is not None else h

    def add_shortcut(self, x, h):
        return h + self.shortcut(x) if self.residual else h


class Downsample(nn.Module):
    def __init__(self, cin: int, cout: int | None = None, conv: str = "regular"):
        super().__init__()
        self.conv = CONV.build(conv, cin, cout or cin, stride=2)

    def forward(self, x, context=None, temb=None):
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest x2 then a conv; the conv may change the width (decoder channel transition)."""

    def __init__(self, cin: int, cout: int | None = None, conv: str = "regular"):
        super().__init__()
        self.conv = CONV.build(conv, cin, cout or cin)

    def forward(self, x, context=None, temb=None):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
