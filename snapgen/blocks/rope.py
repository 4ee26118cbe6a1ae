"""2-D rotary position embedding for image tokens (the paper's step (f)).

Half of each head's channels rotate with the row index, the other half with the column index
(the axial RoPE of FLUX / Lumina-style 2-D extensions). Written by hand: no kept library offers
a 2-D RoPE that works on CPU, CUDA, tracing and Core ML alike.
"""
from __future__ import annotations

import torch

from snapgen.blocks.registry import POS_EMBED


def rope_2d_tables(h: int, w: int, head_dim: int, theta: float = 10000.0, device=None, dtype=torch.float32):
    """cos/sin tables of shape (h*w, head_dim) for row/column axial rotation."""
    quarter = head_dim // 4
    freqs = 1.0 / (theta ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter))
    ys = torch.arange(h, device=device, dtype=torch.float32)
    xs = torch.arange(w, device=device, dtype=torch.float32)
    fy = torch.outer(ys, freqs)  # (h, q)
    fx = torch.outer(xs, freqs)  # (w, q)
    ang = torch.cat([fy[:, None, :].expand(h, w, quarter), fx[None, :, :].expand(h, w, quarter)], dim=-1)
    ang = ang.reshape(h * w, 2 * quarter)
    ang = torch.cat([ang, ang], dim=-1)  # rotate-half layout
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, heads, L, head_dim); rotate-half convention."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * cos + rotated * sin


class Rope2D:
    """Marker object: the attention layer asks it for tables for a given (h, w)."""

    def __init__(self, head_dim: int):
        self.head_dim = head_dim

    def tables(self, h: int, w: int, device, dtype):
        return rope_2d_tables(h, w, self.head_dim, device=device, dtype=dtype)


POS_EMBED.register("rope2d")(Rope2D)
POS_EMBED.register("none")(lambda head_dim: None)
