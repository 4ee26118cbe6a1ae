"""Transformer blocks: optional self-attention, optional cross-attention, a (gated) FFN whose
activation is picked by name (``ffn_activation``: the ACTIVATION registry)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from snapgen.blocks.attention import Attention
from snapgen.blocks.registry import ACTIVATION, NORM

ACTIVATION.register("gelu")(lambda: F.gelu)
ACTIVATION.register("silu")(lambda: F.silu)


class FeedForward(nn.Module):
    """``ratio`` x hidden width; gated (GEGLU / SwiGLU, doubling the first projection) or plain."""

    def __init__(self, dim: int, ratio: float = 4.0, gated: bool = True, activation: str = "gelu"):
        super().__init__()
        hidden = int(round(dim * ratio))
        self.gated, self.act = gated, ACTIVATION.build(activation)
        self.proj_in = nn.Linear(dim, hidden * (2 if gated else 1))
        self.proj_out = nn.Linear(hidden, dim)

    def forward(self, x):
        h = self.proj_in(x)
        if self.gated:
            h, gate = h.chunk(2, dim=-1)
            h = h * self.act(gate)
        else:
            h = self.act(h)
        return self.proj_out(h)


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, *, head_dim: int, context_dim: int, self_attention: bool, cross_attention: bool,
                 ffn_ratio: float, ffn_gated: bool, attention: str, kv_heads: int, qk_norm: str, pos_embed: str,
                 ffn_activation: str = "gelu"):
        super().__init__()
        attn_kw = dict(head_dim=head_dim, kind=attention, kv_heads=kv_heads, qk_norm=qk_norm, pos_embed=pos_embed)
        self.norm1 = nn.LayerNorm(dim) if self_attention else None
        self.attn1 = Attention(dim, **attn_kw) if self_attention else None
        self.norm2 = nn.LayerNorm(dim) if cross_attention else None
        self.attn2 = Attention(dim, context_dim=context_dim, **attn_kw) if cross_attention else None
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, ffn_ratio, ffn_gated, ffn_activation)

    def forward(self, x, context=None, hw=None):
        if self.attn1 is not None:
            x = x + self.attn1(self.norm1(x), hw=hw)
        if self.attn2 is not None and context is not None:
            x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """(B, C, H, W) -> norm -> tokens -> proj_in -> depth x TransformerBlock -> proj_out -> + residual.

    ``in_channels != channels`` happens in stages without residual blocks (paper step (e)):
    a 1x1 projection then carries the channel transition, on the residual path too.
    """

    def __init__(self, in_channels: int, channels: int, depth: int, *, norm: str, norm_groups: int, **block_kw):
        super().__init__()
        self.shortcut = nn.Conv2d(in_channels, channels, 1) if in_channels != channels else None
        self.norm = NORM.build(norm, channels, norm_groups, 1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.blocks = nn.ModuleList(TransformerBlock(channels, **block_kw) for _ in range(depth))
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x, context=None, temb=None):
        if self.shortcut is not None:
            x = self.shortcut(x)
        b, c, h, w = x.shape
        res = x
        t = self.norm(x).flatten(2).transpose(1, 2)
        t = self.proj_in(t)
        for blk in self.blocks:
            t = blk(t, context, (h, w))
        t = self.proj_out(t).transpose(1, 2).reshape(b, c, h, w)
        return t + res
