"""Norms for (B, C, H, W) feature maps (residual blocks) and for token sequences (QK norm)."""
from __future__ import annotations

import torch
import torch.nn as nn

from snapgen.blocks.registry import NORM, QK_NORM


@NORM.register("groupnorm")
def group_norm(channels: int, groups: int = 32, eps: float = 1e-5) -> nn.Module:
    return nn.GroupNorm(groups, channels, eps=eps)


@NORM.register("none")
def no_norm(channels: int, groups: int = 32, eps: float = 1e-5) -> nn.Module:
    return nn.Identity()


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels at every pixel (ConvNeXt's channels-first LayerNorm)."""

    def __init__(self, channels: int, groups: int = 32, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x):
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        x = (x - mu) * torch.rsqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class ChannelRMSNorm(nn.Module):
    """RMSNorm over channels at every pixel."""

    def __init__(self, channels: int, groups: int = 32, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.eps = eps

    def forward(self, x):
        x = x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + self.eps)
        return x * self.weight[:, None, None]


NORM.register("layernorm")(ChannelLayerNorm)
NORM.register("rmsnorm")(ChannelRMSNorm)


@QK_NORM.register("none")
def no_qk_norm(dim: int) -> nn.Module:
    return nn.Identity()


@QK_NORM.register("layernorm")
def qk_layer_norm(dim: int) -> nn.Module:
    return nn.LayerNorm(dim, eps=1e-6)


@QK_NORM.register("rmsnorm")
def qk_rms_norm(dim: int) -> nn.Module:
    return nn.RMSNorm(dim, eps=1e-6)
