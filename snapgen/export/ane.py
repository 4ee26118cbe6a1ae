"""An export-time re-expression of the transformer blocks in a layout the Apple Neural Engine runs well.

Our reading of Apple's "Deploying Transformers on the Apple Neural Engine" (2022) and of the
``SPLIT_EINSUM`` attention of apple/ml-stable-diffusion — principles, not their code:

1. keep activations channels-first as ``(B, C, 1, L)`` (the sequence on the last, contiguous
   axis) instead of ``(B, L, C)``, so no transposes are needed between blocks;
2. run every ``nn.Linear`` as a 1x1 ``Conv2d`` on that layout;
3. split attention per head and compute each head with two einsums
   (``bchq,bkhc->bkhq`` for the scores, ``bkhq,bchk->bchq`` for the values) — no
   ``(B, L, H, D)`` reshapes, which the ANE handles poorly and which fall back to the GPU/CPU;
4. normalise over the channel axis (LayerNorm / RMSNorm on axis 1).

MQA / GQA heads share their key/value slice; QK norms act on each head's channel slice; 2-D RoPE
uses tables precomputed for the export resolution (a fixed shape, as Core ML packages have, and
it avoids a traced integer ``arange``/``outer`` that coremltools mistypes).

The wrappers reuse the original parameters (views), so outputs match the PyTorch model up to
float rounding — ``tests/test_coreml_export.py`` checks that for every block option.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

from snapgen.blocks.attention import Attention
from snapgen.blocks.rope import rope_2d_tables
from snapgen.blocks.transformer import FeedForward, SpatialTransformer, TransformerBlock


def _conv1x1(linear: nn.Linear) -> nn.Conv2d:
    conv = nn.Conv2d(linear.in_features, linear.out_features, 1, bias=linear.bias is not None)
    conv.weight = nn.Parameter(linear.weight.detach()[:, :, None, None].clone())
    if linear.bias is not None:
        conv.bias = nn.Parameter(linear.bias.detach().clone())
    return conv


class ChannelNorm(nn.Module):
    """LayerNorm (``bias`` kept) or RMSNorm over axis 1 of ``(B, C, 1, L)``."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.rms = isinstance(norm, nn.RMSNorm)
        self.eps = norm.eps if norm.eps is not None else torch.finfo(torch.float32).eps
        self.weight = nn.Parameter(norm.weight.detach().clone()) if norm.weight is not None else None
        b = getattr(norm, "bias", None)
        self.bias = nn.Parameter(b.detach().clone()) if b is not None else None

    def forward(self, x):
        if self.rms:
            x = x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + self.eps)
        else:
            mu = x.mean(1, keepdim=True)
            x = x - mu
            x = x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + self.eps)
        if self.weight is not None:
            x = x * self.weight[None, :, None, None]
        if self.bias is not None:
            x = x + self.bias[None, :, None, None]
        return x


class SplitEinsumAttention(nn.Module):
    def __init__(self, attn: Attention, hw: tuple[int, int] | None):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = attn.heads, attn.kv_heads, attn.head_dim
        self.is_cross = attn.is_cross
        self.to_q, self.to_k, self.to_v, self.to_out = (_conv1x1(m) for m in (attn.to_q, attn.to_k, attn.to_v,
                                                                                attn.to_out))
        self.norm_q = None if isinstance(attn.norm_q, nn.Identity) else ChannelNorm(attn.norm_q)
        self.norm_k = None if isinstance(attn.norm_k, nn.Identity) else ChannelNorm(attn.norm_k)
        if attn.rope is not None:
            cos, sin = rope_2d_tables(hw[0], hw[1], self.head_dim)
            self.register_buffer("cos", cos.t()[:, None, :].contiguous(), persistent=False)  # (d, 1, L)
            self.register_buffer("sin", sin.t()[:, None, :].contiguous(), persistent=False)
        else:
            self.cos = self.sin = None

    def _rope(self, x):  # x: (B, d, 1, L), rotate-half along d
        half = self.head_dim // 2
        rotated = torch.cat([-x[:, half:], x[:, :half]], dim=1)
        return x * self.cos + rotated * self.sin

    def forward(self, x, context=None):
        src = context if self.is_cross else x
        q, k, v = self.to_q(x), self.to_k(src), self.to_v(src)
        d, rep = self.head_dim, self.heads // self.kv_heads
        scale = 1.0 / math.sqrt(d)
        ks, vs = [], []
        for j in range(self.kv_heads):
            kj = k[:, j * d:(j + 1) * d]
            if self.norm_k is not None:
                kj = self.norm_k(kj)
            if self.cos is not None:
                kj = self._rope(kj)
            ks.append(kj.transpose(1, 3))  # (B, Lk, 1, d)
            vs.append(v[:, j * d:(j + 1) * d])
        outs = []
        for i in range(self.heads):
            qi = q[:, i * d:(i + 1) * d]
            if self.norm_q is not None:
                qi = self.norm_q(qi)
            if self.cos is not None:
                qi = self._rope(qi)
            w = torch.einsum("bchq,bkhc->bkhq", qi, ks[i // rep]) * scale  # (B, Lk, 1, Lq)
            w = w.softmax(dim=1)
            outs.append(torch.einsum("bkhq,bchk->bchq", w, vs[i // rep]))  # (B, d, 1, Lq)
        return self.to_out(torch.cat(outs, dim=1))


class ConvFeedForward(nn.Module):
    def __init__(self, ff: FeedForward):
        super().__init__()
        self.gated, self.act = ff.gated, ff.act  # the FFN's own activation (ffn_activation)
        self.proj_in, self.proj_out = _conv1x1(ff.proj_in), _conv1x1(ff.proj_out)

    def forward(self, x):
        h = self.proj_in(x)
        if self.gated:
            h, gate = h.chunk(2, dim=1)
            h = h * self.act(gate)
        else:
            h = self.act(h)
        return self.proj_out(h)


class ANETransformerBlock(nn.Module):
    def __init__(self, blk: TransformerBlock, hw):
        super().__init__()
        self.norm1 = ChannelNorm(blk.norm1) if blk.attn1 is not None else None
        self.attn1 = SplitEinsumAttention(blk.attn1, hw) if blk.attn1 is not None else None
        self.norm2 = ChannelNorm(blk.norm2) if blk.attn2 is not None else None
        self.attn2 = SplitEinsumAttention(blk.attn2, hw) if blk.attn2 is not None else None
        self.norm3 = ChannelNorm(blk.norm3)
        self.ff = ConvFeedForward(blk.ff)

    def forward(self, x, context=None):
        if self.attn1 is not None:
            x = x + self.attn1(self.norm1(x))
        if self.attn2 is not None and context is not None:
            x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class ANESpatialTransformer(nn.Module):
    """Drop-in for :class:`SpatialTransformer` at a fixed input size (h, w)."""

    def __init__(self, st: SpatialTransformer, hw: tuple[int, int]):
        super().__init__()
        self.shortcut, self.norm = st.shortcut, st.norm
        self.proj_in, self.proj_out = _conv1x1(st.proj_in), _conv1x1(st.proj_out)
        self.blocks = nn.ModuleList(ANETransformerBlock(b, hw) for b in st.blocks)
        if hasattr(st, "signature"):  # built from a plan: the latency breakdown groups it by stage
            self.signature = dict(st.signature)

    def forward(self, x, context=None, temb=None):
        if self.shortcut is not None:
            x = self.shortcut(x)
        res = x
        # flatten/unsqueeze rather than reshape(b, c, 1, h * w): coremltools cannot fold the traced h * w.
        t = self.proj_in(self.norm(x).flatten(2).unsqueeze(2))
        ctx = context.transpose(1, 2).unsqueeze(2) if context is not None else None  # (B, D, 1, Lc)
        for blk in self.blocks:
            t = blk(t, ctx)
        return self.proj_out(t).squeeze(2).unflatten(2, res.shape[2:]) + res


def _transformer_input_sizes(model: nn.Module, example_inputs: tuple) -> dict[int, tuple[int, int]]:
    """(h, w) each SpatialTransformer of ``model`` sees on ``example_inputs``, keyed by module id."""
    sizes: dict[int, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda m, a: sizes.__setitem__(id(m), tuple(a[0].shape[-2:])))
             for m in model.modules() if isinstance(m, SpatialTransformer)]
    try:
        with torch.no_grad():
            model(*example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return sizes


def ane_layout(model: nn.Module, example_inputs: tuple) -> nn.Module:
    """A deep copy of ``model`` with every SpatialTransformer in the split-einsum layout for the
    input sizes seen on ``example_inputs``."""
    model = copy.deepcopy(model).eval()
    sizes = _transformer_input_sizes(model, example_inputs)
    if isinstance(model, SpatialTransformer):
        return ANESpatialTransformer(model, sizes[id(model)])
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SpatialTransformer) and id(child) in sizes:
                setattr(parent, name, ANESpatialTransformer(child, sizes[id(child)]))
    return model


class _FrozenRope:
    """Stands in for :class:`snapgen.blocks.rope.Rope2D` with tables precomputed for one size, so
    a trace holds them as constants (coremltools mistypes the traced integer ``arange``/``outer``)."""

    def __init__(self, head_dim: int, hw: tuple[int, int]):
        self.head_dim = head_dim
        self.cos, self.sin = rope_2d_tables(hw[0], hw[1], head_dim)

    def tables(self, h, w, device, dtype):
        return self.cos.to(device, dtype), self.sin.to(device, dtype)


def freeze_rope(model: nn.Module, example_inputs: tuple) -> nn.Module:
    """A deep copy of ``model`` whose self-attention RoPE tables are constants for the input sizes
    seen on ``example_inputs`` (the "original" attention layout's export path)."""
    model = copy.deepcopy(model).eval()
    sizes = _transformer_input_sizes(model, example_inputs)
    for st in model.modules():
        if isinstance(st, SpatialTransformer) and id(st) in sizes:
            for blk in st.blocks:
                if blk.attn1 is not None and blk.attn1.rope is not None:
                    blk.attn1.rope = _FrozenRope(blk.attn1.head_dim, sizes[id(st)])
    return model
