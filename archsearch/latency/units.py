"""Latency units: the pieces a block's latency is the sum of, their keys, and how to run one.

A block (a ResBlock, a SpatialTransformer...) is split into units whose cost does not depend on
the rest of the block, so that the table stays small enough to calibrate on a laptop:

================  ==========================================================  =====================
unit              what it runs (the real snapgen modules where one exists)     scales with
================  ==========================================================  =====================
conv              ``CONV.build(conv, cin, cout, stride, expansion)``          pixels
normact           norm + SiLU (``NORM.build``)                                 pixels
resadd            ResBlock glue: time-embedding projection + add, shortcut     pixels
down / up         ``Downsample`` / ``Upsample`` (nearest x2 + conv)            pixels
cat               skip concatenation                                           pixels
temb              ``TimestepEmbedding``                                        —
txio              ``SpatialTransformer`` with depth 0 (norm, proj in/out, res) tokens
sa                LayerNorm + self-``Attention`` (no QK norm, no RoPE) + add,  tokens
                  attention core removed
sdpa              ``scaled_dot_product_attention`` core of self-attention      measured at target
qknorm            QK norm of the queries or of the keys                        tokens (not context)
rope              2-D RoPE tables + rotation of queries and keys               tokens
ca                LayerNorm + cross-``Attention`` (no QK norm) + add, core in  tokens
ffn               LayerNorm + ``FeedForward`` + add                            tokens
================  ==========================================================  =====================

Every key holds the unit's options and its input size *at the target latent*; units whose cost
is linear in pixels/tokens may be measured at a smaller calibration latent and scaled
(see :mod:`archsearch.latency.table`), the quadratic attention core never is.
"""
from __future__ import annotations

import itertools
import json
from contextlib import contextmanager
from typing import Any, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from snapgen.blocks import (ATTENTION, CONV, NORM, POS_EMBED, QK_NORM, Attention, Downsample, FeedForward, ResBlock, SpatialTransformer,
                            TimestepEmbedding, Upsample)
from snapgen.blocks.rope import apply_rope
from snapgen.plan import Block, plan

Key = str  # canonical JSON of a unit dict
UNSCALED = ("temb",)  # cost independent of the latent size
AT_TARGET = ("sdpa",)  # always measured at the target latent (quadratic in tokens)


def key_of(unit: dict[str, Any]) -> Key:
    return json.dumps(unit, sort_keys=True, separators=(",", ":"))


def unit_of(key: Key) -> dict[str, Any]:
    return json.loads(key)


def unit_class(unit: dict[str, Any]) -> str:
    """Units of one class share a calibration-to-target scale correction."""
    u = unit["u"]
    if u in ("conv", "down", "up"):
        return f"{u}:{unit['conv']}"
    return u


def _conv(conv: str, cin: int, cout: int, h: int, w: int, stride: int, expansion: float) -> dict:
    return dict(u="conv", conv=conv, cin=cin, cout=cout, h=h, w=w, stride=stride,
                exp=float(expansion) if CONV.meta(conv).get("expansion") else 0.0)


def _normact(norm: str, c: int, h: int, w: int, groups: int) -> dict:
    return dict(u="normact", norm=norm, c=c, h=h, w=w, groups=groups if norm == "groupnorm" else 0)


def _kv(attention: str, kv_heads: int) -> int:
    return kv_heads if attention == "gqa" else 0


def units_of_block(s: dict[str, Any], h: int, *, groups: int, context_len: int) -> list[dict[str, Any]]:
    """The units of a planned block's signature ``s`` at resolution ``h`` x ``h``."""
    t, w = s["type"], h
    if t == "res":
        cin, cout = s["cin"], s["cout"]
        shortcut = "identity" if cin == cout else ("conv" if s["conv_shortcut"] else "none")
        return [_normact(s["norm"], cin, h, w, groups), _conv(s["conv"], cin, cout, h, w, 1, s["expansion"]),
                _normact(s["norm"], cout, h, w, groups), _conv(s["conv"], cout, cout, h, w, 1, s["expansion"]),
                dict(u="resadd", cin=cin, cout=cout, h=h, w=w, temb=s["temb_dim"], shortcut=shortcut)]
    if t == "transformer":
        ch, hd = s["channels"], s["head_dim"]
        out = [dict(u="txio", norm=s["norm"], cin=s["in_channels"], c=ch, h=h, w=w, groups=groups if s["norm"] == "groupnorm" else 0)]
        per = []
        heads = ch // hd
        kvn = ATTENTION.build(s["attention"], heads, s["kv_heads"])
        att = dict(head_dim=hd, attention=s["attention"], kv_heads=_kv(s["attention"], s["kv_heads"]))
        qk = s["qk_norm"]
        if s["self_attention"]:
            per.append(dict(u="sa", c=ch, h=h, w=w, **att))
            per.append(dict(u="sdpa", heads=heads, n=h * w, head_dim=hd))
            if qk != "none":
                per += [dict(u="qknorm", kind=qk, heads=heads, n=h * w, head_dim=hd, fixed=False),
                        dict(u="qknorm", kind=qk, heads=kvn, n=h * w, head_dim=hd, fixed=False)]
            if s["pos_embed"] == "rope2d":
                per.append(dict(u="rope", heads=heads, kv=kvn, h=h, w=w, head_dim=hd))
        if s["cross_attention"] and s["context_dim"]:
            per.append(dict(u="ca", c=ch, h=h, w=w, ctx_len=context_len, ctx_dim=s["context_dim"], **att))
            if qk != "none":
                per += [dict(u="qknorm", kind=qk, heads=heads, n=h * w, head_dim=hd, fixed=False),
                        dict(u="qknorm", kind=qk, heads=kvn, n=context_len, head_dim=hd, fixed=True)]
        ffn = dict(u="ffn", c=ch, h=h, w=w, ratio=float(s["ffn_ratio"]), gated=s["ffn_gated"])
        per.append(ffn if s["ffn_activation"] == "gelu" else dict(ffn, act=s["ffn_activation"]))
        return out + per * s["depth"]
    if t in ("conv_in", "conv_out"):
        return [_conv(s["conv"], s["cin"], s["cout"], h, w, 1, 2.0)]
    if t == "temb":
        return [dict(u="temb", base=s["base"], dim=s["dim"], pooled=s["pooled"])]
    if t == "norm_out":
        return [_normact(s["norm"], s["c"], h, w, groups)]
    if t == "down":
        return [dict(u="down", conv=s["conv"], c=s["cin"], h=h, w=w)]
    if t == "up":
        return [dict(u="up", conv=s["conv"], cin=s["cin"], cout=s["cout"], h=h, w=w)]
    if t == "cat":
        return [dict(u="cat", c1=s["c1"], c2=s["c2"], h=h, w=w)]
    raise ValueError(f"unknown block type {t!r}")


def units_of(spec, latent_size: int, context_len: int = 77) -> list[tuple[Block, dict[str, Any]]]:
    """(block, unit) pairs of an architecture's :func:`~snapgen.plan.plan`: its predicted latency is
    the sum over units."""
    return [(b, u) for b in plan(spec)
            for u in units_of_block(b.sig, b.size(latent_size), groups=spec.norm_groups, context_len=context_len)]


# ---- running one unit ----------------------------------------------------------------------------
class _NormAct(nn.Module):
    def __init__(self, norm: str, c: int, groups: int):
        super().__init__()
        self.norm = NORM.build(norm, c, groups or 32, 1e-5)

    def forward(self, x):
        return F.silu(self.norm(x))


class _ResAdd(nn.Module):
    """The glue of ``ResBlock.forward`` around its two convs: its own ``add_temb`` / ``add_shortcut``,
    on the time-embedding projection and shortcut alone."""

    def __init__(self, cin: int, cout: int, temb: int, shortcut: str):
        super().__init__()
        self.temb_proj = nn.Linear(temb, cout) if temb else None
        self.shortcut = nn.Conv2d(cin, cout, 1) if shortcut == "conv" else nn.Identity()
        self.residual = shortcut != "none"

    def forward(self, x, h, temb):
        return ResBlock.add_shortcut(self, x, ResBlock.add_temb(self, h, temb))


class _PreNorm(nn.Module):
    """``x + sublayer(LayerNorm(x))``: one line of ``TransformerBlock.forward``."""

    def __init__(self, dim: int, sub: nn.Module, kind: str, hw=None):
        super().__init__()
        self.norm, self.sub, self.kind, self.hw = nn.LayerNorm(dim), sub, kind, hw

    def forward(self, x, context=None):
        if self.kind == "sa":
            return x + self.sub(self.norm(x), hw=self.hw)
        if self.kind == "ca":
            return x + self.sub(self.norm(x), context)
        return x + self.sub(self.norm(x))


class _Cat(nn.Module):
    def forward(self, a, b):
        return torch.cat([a, b], dim=1)


class _Rope(nn.Module):
    def __init__(self, head_dim: int, h: int, w: int):
        super().__init__()
        self.rope, self.hw = POS_EMBED.build("rope2d", head_dim), (h, w)

    def forward(self, q, k):
        cos, sin = self.rope.tables(self.hw[0], self.hw[1], q.device, q.dtype)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin)


class _SDPA(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


class _NoCoreF:
    """``torch.nn.functional`` with the attention core replaced by an empty output of its shape:
    lets the ``sa`` unit time everything around the core through the real ``Attention.forward``."""

    def __getattr__(self, name):
        return getattr(F, name)

    @staticmethod
    def scaled_dot_product_attention(q, k, v, *args, **kwargs):
        return torch.empty(q.shape, dtype=q.dtype, device=q.device)


@contextmanager
def attention_core_removed(active: bool = True):
    import snapgen.blocks.attention as attn_mod

    if not active:
        yield
        return
    old = attn_mod.F
    attn_mod.F = _NoCoreF()
    try:
        yield
    finally:
        attn_mod.F = old


def build_unit(unit: dict[str, Any], h: int, w: int, seed: int = 0) -> tuple[nn.Module, tuple]:
    """A module running ``unit`` at spatial size (h, w) and its inputs (batch 1)."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    u = unit["u"]
    if u == "conv":
        m = CONV.build(unit["conv"], unit["cin"], unit["cout"], stride=unit["stride"], expansion=unit["exp"] or 2.0)
        return m, (rnd(1, unit["cin"], h, w),)
    if u == "normact":
        return _NormAct(unit["norm"], unit["c"], unit["groups"]), (rnd(1, unit["c"], h, w),)
    if u == "resadd":
        m = _ResAdd(unit["cin"], unit["cout"], unit["temb"], unit["shortcut"])
        return m, (rnd(1, unit["cin"], h, w), rnd(1, unit["cout"], h, w), rnd(1, max(unit["temb"], 1)))
    if u == "down":
        return Downsample(unit["c"], conv=unit["conv"]), (rnd(1, unit["c"], h, w),)
    if u == "up":
        return Upsample(unit["cin"], unit["cout"], conv=unit["conv"]), (rnd(1, unit["cin"], h, w),)
    if u == "cat":
        return _Cat(), (rnd(1, unit["c1"], h, w), rnd(1, unit["c2"], h, w))
    if u == "temb":
        m = TimestepEmbedding(unit["base"], unit["dim"], unit["pooled"])
        return m, ((torch.full((1,), 500.0), rnd(1, unit["pooled"])) if unit["pooled"] else (torch.full((1,), 500.0),))
    if u == "txio":
        m = SpatialTransformer(unit["cin"], unit["c"], 0, norm=unit["norm"], norm_groups=unit["groups"] or 32,
                               head_dim=64, context_dim=0, self_attention=False, cross_attention=False, ffn_ratio=1.0,
                               ffn_gated=False, attention="mhsa", kv_heads=0, qk_norm="none", pos_embed="none")
        return m, (rnd(1, unit["cin"], h, w),)
    c, n = unit.get("c"), h * w
    if u == "sa":
        a = Attention(c, unit["head_dim"], None, unit["attention"], unit["kv_heads"], "none", "none")
        return _PreNorm(c, a, "sa", (h, w)), (rnd(1, n, c),)
    if u == "ca":
        a = Attention(c, unit["head_dim"], unit["ctx_dim"], unit["attention"], unit["kv_heads"], "none", "none")
        return _PreNorm(c, a, "ca"), (rnd(1, n, c), rnd(1, unit["ctx_len"], unit["ctx_dim"]))
    if u == "ffn":
        return _PreNorm(c, FeedForward(c, unit["ratio"], unit["gated"], unit.get("act", "gelu")), "ffn"), (rnd(1, n, c),)
    if u == "qknorm":  # one of the two QK-norm lines of Attention.forward
        x = rnd(1, unit["n"], unit["heads"], unit["head_dim"]).transpose(1, 2)
        return QK_NORM.build(unit["kind"], unit["head_dim"]), (x,)
    if u == "rope":  # the RoPE lines of Attention.forward: tables, then q and k rotated
        hd = unit["head_dim"]
        q = rnd(1, n, unit["heads"], hd).transpose(1, 2)
        k = rnd(1, n, unit["kv"], hd).transpose(1, 2)
        return _Rope(hd, h, w), (q, k)
    if u == "sdpa":
        heads, hd, n = unit["heads"], unit["head_dim"], unit["n"]
        # (B, L, heads, d) viewed as (B, heads, L, d): the layout Attention.forward hands to the core.
        qkv = [rnd(1, n, heads, hd).transpose(1, 2) for _ in range(3)]
        return _SDPA(), tuple(qkv)
    raise ValueError(f"unknown unit {u!r}")


# ---- enumerating the units a search space can produce -------------------------------------------
def _values(space, name: str, stage: int | None, base_value) -> list:
    """Every value field ``name`` can take (at ``stage``) in ``space``: its choices and the base value."""
    from snapgen.errors import UserError

    out = [base_value]
    for dim in space.dimensions:
        if dim.name != name:
            continue
        vals = dim.values(stage if dim.per_stage else None)
        if vals is None:
            raise UserError("a lookup table needs discrete dimensions (choices, or low/high with a step)",
                            file=str(space.path), key=f"search.dimensions.{name}")
        out += vals
    return list({(type(v), v): v for v in out}.values())


def enumerate_units(space, latent_size: int, context_len: int = 77) -> list[dict[str, Any]]:
    """Every distinct unit any architecture of ``space`` can contain (a superset: option
    combinations are crossed per block, ignoring correlations between dimensions)."""
    base = space.preset(space.base)
    if space.kind == "decoder":
        return _enumerate_decoder(space, base, latent_size)
    return _enumerate_unet(space, base, latent_size, context_len)


def _dedupe(units: Iterable[dict]) -> list[dict]:
    seen: dict[Key, dict] = {}
    for u in units:
        seen.setdefault(key_of(u), u)
    return [seen[k] for k in sorted(seen)]


def _enumerate_unet(space, base, latent_size: int, context_len: int) -> list[dict]:
    from dataclasses import replace

    n = base.num_stages
    top = lambda f: _values(space, f, None, getattr(base, f))  # noqa: E731
    sv = lambda f, i: _values(space, f, i, getattr(base.stages[i], f))  # noqa: E731
    # 1. Block positions: run the plan over every structural combination (widths, layer
    #    counts, which stages have residual / transformer blocks); options are crossed in step 2.
    structural = []
    for i in range(n):
        opts = []
        for ch, layers, rb, depth in itertools.product(sv("channels", i), sv("layers", i), sv("res_block", i),
                                                       sorted({min(d, 1) for d in sv("transformer_depth", i)})):
            if not rb and depth == 0:
                continue
            opts.append(dict(channels=ch, layers=layers, res_block=rb, transformer_depth=depth))
        structural.append(opts)
    positions: dict[str, Block] = {}
    for combo in itertools.product(*structural, top("mid_block")):
        *stage_opts, mid = combo
        if len({o["layers"] for o in stage_opts}) > 1 and not any(d.name == "layers" and d.per_stage for d in space.dimensions):
            continue  # layers is one shared choice
        stages = tuple(replace(base.stages[i], **o) for i, o in enumerate(stage_opts))
        spec = replace(base, stages=stages, mid_block=mid)
        for b in plan(spec):
            positions.setdefault(json.dumps([b.sig, b.size(latent_size), b.stage], sort_keys=True), b)
    # 2. Cross each position with the options its stage (or the global fields) can take.
    units = []
    groups_v, head_v, ctx_v = top("norm_groups"), top("head_dim"), top("context_dim")
    for b in positions.values():
        s, i, t = b.sig, b.stage, b.kind
        variants: list[dict] = []
        if t == "res":
            for conv, exp, norm, sc in itertools.product(sv("conv", i), sv("conv_expansion", i), sv("norm", i),
                                                        sv("conv_shortcut", i)):
                variants.append(dict(s, conv=conv, expansion=exp, norm=norm, conv_shortcut=sc))
        elif t == "transformer":
            for (norm, sa, ca, ffn, gated, act, att, kv, qk, pos, hd, ctx) in itertools.product(
                    sv("norm", i), sv("self_attention", i), sv("cross_attention", i), sv("ffn_ratio", i),
                    sv("ffn_gated", i), sv("ffn_activation", i), sv("attention", i), sv("kv_heads", i),
                    sv("qk_norm", i), sv("pos_embed", i), head_v, ctx_v):
                ch = s["channels"]
                if (sa or ca) and ch % hd:
                    continue
                if att == "gqa" and (kv < 1 or (ch // hd) % kv):
                    continue
                variants.append(dict(s, norm=norm, self_attention=sa, cross_attention=ca, ffn_ratio=ffn,
                                     ffn_gated=gated, ffn_activation=act, attention=att, kv_heads=kv, qk_norm=qk,
                                     pos_embed=pos, head_dim=hd, context_dim=ctx if ca else 0, depth=1))
        elif t in ("down", "up"):
            variants = [dict(s, conv=c) for c in top("sampling_conv")]
        elif t in ("conv_in", "conv_out"):
            variants = [dict(s, conv=c) for c in top("io_conv")]
        elif t == "norm_out":
            variants = [dict(s, norm=nm) for nm in sv("norm", 0)]
        else:
            variants = [s]
        for g in groups_v:
            for v in variants:
                units += units_of_block(v, b.size(latent_size), groups=g, context_len=context_len)
    return _dedupe(units)


def _enumerate_decoder(space, base, latent_size: int) -> list[dict]:
    from dataclasses import replace

    n = len(base.channels)
    sv = lambda f, i: _values(space, f, i, getattr(base, f)[i])  # noqa: E731
    top = lambda f: _values(space, f, None, getattr(base, f))  # noqa: E731
    units = []
    for chans in itertools.product(*[sv("channels", i) for i in range(n)]):
        for blocks in itertools.product(*[sorted({min(b, 1) for b in sv("blocks", i)}) for i in range(n)]):
            for conv, exp, norm_out, sc in itertools.product(top("conv"), top("conv_expansion"), top("norm_out"),
                                                            top("conv_shortcut")):
                for norms in itertools.product(*[sv("norm", i) for i in range(n)]):
                    spec = replace(base, channels=tuple(chans), blocks=tuple(blocks), norm=tuple(norms), conv=conv,
                                   conv_expansion=exp, norm_out=norm_out, conv_shortcut=sc)
                    units += [u for _, u in units_of(spec, latent_size)]
    return _dedupe(units)
