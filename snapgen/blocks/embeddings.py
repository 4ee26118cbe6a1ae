"""Timestep embedding (sinusoidal + MLP, as diffusers' ``Timesteps`` + ``TimestepEmbedding``)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn


def sinusoidal(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """cos/sin embedding of (B,) timesteps in diffusers' layout (flip_sin_to_cos=True, shift 0)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = nn.functional.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    def __init__(self, base_dim: int, embed_dim: int, pooled_dim: int = 0):
        super().__init__()
        self.base_dim = base_dim
        self.linear_1 = nn.Linear(base_dim, embed_dim)
        self.linear_2 = nn.Linear(embed_dim, embed_dim)
        # Optional pooled condition (e.g. pooled text embedding), added to the time embedding.
        self.pooled = nn.Linear(pooled_dim, embed_dim) if pooled_dim else None

    def forward(self, t: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        e = sinusoidal(t, self.base_dim).to(self.linear_1.weight.dtype)  # fp32 sinusoid; a fp16/bf16 model's dtype
        emb = self.linear_2(nn.functional.silu(self.linear_1(e)))
        if self.pooled is not None and pooled is not None:
            emb = emb + self.pooled(pooled)
        return emb
