"""The topology of an architecture, written down once: :func:`plan` lists its blocks in execution order.

Each :class:`Block`: its kind, its constructor's keyword arguments, the channels it reads, its
resolution (``latent_size * 2**level``), the stage whose options it takes and its module path in the
built model (empty for skip concatenations). :class:`snapgen.unet.SnapGenUNet` and
:class:`snapgen.decoder.TinyDecoder` build from it; the latency units and the per-stage cost read it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn


@dataclass(frozen=True)
class Block:
    kind: str  # res | transformer | down | up | conv_in | temb | cat | norm_out | conv_out
    args: dict[str, Any]
    cin: int  # channels of the block's input
    level: int  # resolution = latent_size * 2**level (UNet: -depth of the stage; decoder: +stage)
    stage: int  # stage whose options the block takes (-1: fixed parts)
    part: str  # down | mid | up | io (UNet); stage | io (decoder)
    path: tuple = field(default=())  # module path in the built model

    @property
    def sig(self) -> dict[str, Any]:
        return dict(type=self.kind, **self.args)

    def size(self, latent_size: int) -> int:
        return latent_size << self.level if self.level >= 0 else latent_size >> -self.level

    def label(self) -> str:
        """The per-stage breakdown's name for the block: ``stage{i}``, ``mid`` or ``io``."""
        return "io" if self.stage < 0 else ("mid" if self.part == "mid" else f"stage{self.stage}")


def _res(spec, s, cin: int, cout: int, temb: int, norm_groups: int, eps: float = 1e-5) -> dict[str, Any]:
    return dict(cin=cin, cout=cout, temb_dim=temb, conv=s.conv, expansion=s.conv_expansion, norm=s.norm,
                norm_groups=norm_groups, conv_shortcut=s.conv_shortcut, eps=eps)


def _layer(spec, i: int, cin: int, level: int, part: str, path: tuple) -> list[Block]:
    """One UNet layer: [ResBlock] + [SpatialTransformer]; cin -> the stage's channels."""
    s, out = spec.stages[i], []
    if s.res_block:
        out.append(Block("res", _res(spec, s, cin, s.channels, spec.time_embed_dim, spec.norm_groups), cin, level, i,
                         part, path + (len(out),)))
        cin = s.channels
    if s.transformer_depth > 0:
        from snapgen.spec import TRANSFORMER_FIELDS

        args = dict(in_channels=cin, channels=s.channels, depth=s.transformer_depth, norm=s.norm,
                    norm_groups=spec.norm_groups, head_dim=spec.head_dim,
                    context_dim=spec.context_dim if s.cross_attention else 0,
                    **{f: getattr(s, f) for f in TRANSFORMER_FIELDS})
        out.append(Block("transformer", args, cin, level, i, part, path + (len(out),)))
    return out


def unet_plan(spec) -> list[Block]:
    """SDXL's layout: conv_in, per stage ``layers`` x layer then a strided downsample, a mid block
    [layer, ResBlock], mirrored up stages of ``layers + 1`` layers each taking one skip."""
    st, n, c0 = spec.stages, spec.num_stages, spec.stages[0].channels
    lc, temb = spec.latent_channels, spec.time_embed_dim
    blocks = [Block("conv_in", dict(conv=spec.io_conv, cin=lc, cout=c0), lc, 0, -1, "io", ("conv_in",)),
              Block("temb", dict(base=c0, dim=temb, pooled=spec.pooled_dim), c0, 0, -1, "io", ("time_embedding",))]
    skips, cin = [c0], c0
    for i, s in enumerate(st):
        for j in range(s.layers):
            blocks += _layer(spec, i, cin, -i, "down", ("down", i, "layers", j))
            cin = s.channels
            skips.append(cin)
        if i < n - 1:
            blocks.append(Block("down", dict(cin=cin, cout=cin, conv=spec.sampling_conv), cin, -i, i, "down",
                                ("down", i, "sample")))
            skips.append(cin)
    last = st[-1]
    if spec.mid_block:
        blocks += _layer(spec, n - 1, cin, 1 - n, "mid", ("mid", 0))
        if last.transformer_depth and last.res_block:
            blocks.append(Block("res", _res(spec, last, cin, cin, temb, spec.norm_groups), cin, 1 - n, n - 1, "mid",
                                ("mid", 1, 0)))
    for u, i in enumerate(reversed(range(n))):
        for j in range(st[i].layers + 1):
            skip = skips.pop()
            blocks.append(Block("cat", dict(c1=cin, c2=skip), cin + skip, -i, i, "up"))
            blocks += _layer(spec, i, cin + skip, -i, "up", ("up", u, "layers", j))
            cin = st[i].channels
        if i > 0:
            blocks.append(Block("up", dict(cin=cin, cout=cin, conv=spec.sampling_conv), cin, -i, i, "up",
                                ("up", u, "sample")))
    blocks.append(Block("norm_out", dict(norm=st[0].norm, c=c0), c0, 0, -1, "io", ("norm_out",)))
    blocks.append(Block("conv_out", dict(conv=spec.io_conv, cin=c0, cout=lc), c0, 0, -1, "io", ("conv_out",)))
    return blocks


def decoder_plan(spec) -> list[Block]:
    """The tiny decoder: conv_in, per stage [upsample carrying the channel transition] + residual
    blocks, norm_out, conv_out; one 2x upsample between stages."""
    c, lc = spec.channels, spec.latent_channels
    blocks = [Block("conv_in", dict(conv="regular", cin=lc, cout=c[0]), lc, 0, -1, "io", ("conv_in",))]
    for i, ch in enumerate(c):
        k = 0
        if i > 0:
            blocks.append(Block("up", dict(cin=c[i - 1], cout=ch, conv=spec.conv), c[i - 1], i - 1, i, "stage",
                                ("stages", i, 0)))
            k = 1
        for j in range(spec.blocks[i]):
            args = dict(cin=ch, cout=ch, temb_dim=0, conv=spec.conv, expansion=spec.conv_expansion, norm=spec.norm[i],
                        norm_groups=spec.norm_groups, conv_shortcut=spec.conv_shortcut, eps=1e-6)
            blocks.append(Block("res", args, ch, i, i, "stage", ("stages", i, k + j)))
    n = len(c) - 1
    blocks.append(Block("norm_out", dict(norm=spec.norm_out, c=c[-1]), c[-1], n, -1, "io", ("norm_out",)))
    blocks.append(Block("conv_out", dict(conv="regular", cin=c[-1], cout=spec.out_channels), c[-1], n, -1, "io",
                        ("conv_out",)))
    return blocks


def plan(spec) -> list[Block]:
    """The blocks of a SnapGen UNet (ArchSpec) or a tiny decoder (DecoderSpec), in execution order."""
    from snapgen.decoder import DecoderSpec
    from snapgen.errors import UserError
    from snapgen.spec import ArchSpec

    if isinstance(spec, ArchSpec):
        return unet_plan(spec)
    if isinstance(spec, DecoderSpec):
        return decoder_plan(spec)
    raise UserError(f"a block plan covers SnapGen UNets and tiny decoders, not {getattr(spec, 'name', spec)!r} "
                    "(a diffusers AutoencoderKL decoder): measure it instead", key="spec")


def build_block(b: Block, norm_groups: int, norm_eps: float) -> nn.Module:
    """The module of one planned block (``norm_groups`` / ``norm_eps``: of the output norm)."""
    from snapgen.blocks import CONV, NORM, Downsample, ResBlock, SpatialTransformer, TimestepEmbedding, Upsample

    a = b.args
    build = {"res": lambda: ResBlock(**a), "transformer": lambda: SpatialTransformer(**a),
             "down": lambda: Downsample(a["cin"], a["cout"], conv=a["conv"]),
             "up": lambda: Upsample(a["cin"], a["cout"], conv=a["conv"]),
             "conv_in": lambda: CONV.build(a["conv"], a["cin"], a["cout"]),
             "conv_out": lambda: CONV.build(a["conv"], a["cin"], a["cout"]),
             "temb": lambda: TimestepEmbedding(a["base"], a["dim"], a["pooled"]),
             "norm_out": lambda: NORM.build(a["norm"], a["c"], norm_groups, norm_eps)}
    m = build[b.kind]()
    if b.kind in ("res", "transformer", "down", "up"):
        m.signature = b.sig  # what the latency tests hold the plan against (forward hooks)
    return m


def build_into(model: nn.Module, blocks: list[Block], norm_groups: int, norm_eps: float,
               leaf=nn.ModuleList) -> None:
    """Build every planned block in order (so initialisation draws the same random numbers as ever) and
    place it at its path in ``model``, creating ModuleLists / ModuleDicts on the way (``leaf``: those
    holding blocks)."""
    for b in blocks:
        if not b.path:
            continue
        m = build_block(b, norm_groups, norm_eps)
        if len(b.path) == 1:
            setattr(model, b.path[0], m)
            continue
        if not hasattr(model, b.path[0]):
            setattr(model, b.path[0], nn.ModuleList())
        node, keys = getattr(model, b.path[0]), b.path[1:]
        for d, key in enumerate(keys):
            last = d == len(keys) - 1
            new = (lambda: m) if last else (leaf if d == len(keys) - 2 else
                                           (nn.ModuleList if isinstance(keys[d + 1], int) else nn.ModuleDict))
            if isinstance(node, nn.ModuleDict):
                if key not in node:
                    node[key] = new()
            else:
                while len(node) <= key:
                    node.append(new())
            node = node[key]
