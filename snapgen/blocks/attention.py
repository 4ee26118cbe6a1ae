"""Attention layers: MHSA / MQA / GQA, optional QK norm and 2-D RoPE, computed with
``torch.nn.functional.scaled_dot_product_attention``."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from snapgen.blocks.registry import ATTENTION, POS_EMBED, QK_NORM
from snapgen.blocks.rope import apply_rope


@ATTENTION.register("mhsa")
def _mhsa_kv_heads(heads: int, kv_heads: int = 0) -> int:
    return heads


@ATTENTION.register("mqa")
def _mqa_kv_heads(heads: int, kv_heads: int = 0) -> int:
    return 1


@ATTENTION.register("gqa")
def _gqa_kv_heads(heads: int, kv_heads: int = 0) -> int:
    return kv_heads


class Attention(nn.Module):
    """Self- or cross-attention. ``kind`` picks how many key/value heads there are."""

    def __init__(
        self,
        dim: int,
        head_dim: int = 64,
        context_dim: int | None = None,
        kind: str = "mhsa",
        kv_heads: int = 0,
        qk_norm: str = "none",
        pos_embed: str = "none",
    ):
        super().__init__()
        self.heads = dim // head_dim
        self.head_dim = head_dim
        self.kv_heads = ATTENTION.build(kind, self.heads, kv_heads)
        self.is_cross = context_dim is not None
        kv_in = context_dim if self.is_cross else dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(kv_in, self.kv_heads * head_dim, bias=False)
        self.to_v = nn.Linear(kv_in, self.kv_heads * head_dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        self.norm_q = QK_NORM.build(qk_norm, head_dim)
        self.norm_k = QK_NORM.build(qk_norm, head_dim)
        # RoPE only rotates image tokens against image tokens: self-attention only.
        self.rope = None if self.is_cross else POS_EMBED.build(pos_embed, head_dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, hw: tuple[int, int] | None = None):
        b, n, _ = x.shape
        src = context if self.is_cross else x
        q = self.to_q(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.to_k(src).view(b, src.shape[1], self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.to_v(src).view(b, src.shape[1], self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = self.norm_q(q), self.norm_k(k)
        if self.rope is not None:
            cos, sin = self.rope.tables(hw[0], hw[1], x.device, q.dtype)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.kv_heads != self.heads:
            # Broadcast shared key/value heads (expand is a view: no copy of K/V weights' output).
            rep = self.heads // self.kv_heads
            k = k[:, :, None].expand(b, self.kv_heads, rep, k.shape[2], self.head_dim).reshape(b, self.heads, -1, self.head_dim)
            v = v[:, :, None].expand(b, self.kv_heads, rep, v.shape[2], self.head_dim).reshape(b, self.heads, -1, self.head_dim)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(b, n, self.heads * self.head_dim)
        return self.to_out(out)
