"""The blocks of an architecture, read off its spec without building it.

Mirrors the constructors of :class:`snapgen.unet.SnapGenUNet` and :class:`snapgen.decoder.TinyDecoder`
so that a latency prediction costs microseconds instead of a model build. Each block is its
module's ``.signature`` (the same dict the module carries) plus the input shape it sees and the
stage it belongs to; ``tests/test_latency_table.py`` checks this list against forward hooks on the
built models, so a change to the builders that is not mirrored here fails loudly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from snapgen.spec import ArchSpec, StageSpec


@dataclass(frozen=True)
class Block:
    sig: dict[str, Any]  # the module's .signature (or a fixed part: conv_in, temb, norm_out, conv_out, cat)
    shape: tuple[int, int, int]  # (channels, height, width) of the block's input
    stage: int  # stage whose options the block takes (-1: fixed parts)
    part: str  # down | mid | up | io (UNet); stage | io (decoder)


def res_sig(cin, cout, temb_dim, conv, expansion, norm, conv_shortcut) -> dict[str, Any]:
    return dict(type="res", cin=cin, cout=cout, temb_dim=temb_dim, conv=conv, expansion=expansion, norm=norm,
                conv_shortcut=conv_shortcut)


def transformer_sig(spec: ArchSpec, s: StageSpec, cin: int) -> dict[str, Any]:
    return dict(type="transformer", in_channels=cin, channels=s.channels, depth=s.transformer_depth, norm=s.norm,
                head_dim=spec.head_dim, self_attention=s.self_attention, cross_attention=s.cross_attention,
                ffn_ratio=s.ffn_ratio, ffn_gated=s.ffn_gated, attention=s.attention, kv_heads=s.kv_heads,
                qk_norm=s.qk_norm, pos_embed=s.pos_embed, context_dim=spec.context_dim if s.cross_attention else 0)


def _layer(spec: ArchSpec, i: int, cin: int, r: int, part: str) -> list[Block]:
    s = spec.stages[i]
    out = []
    if s.res_block:
        out.append(Block(res_sig(cin, s.channels, spec.time_embed_dim, s.conv, s.conv_expansion, s.norm,
                                 s.conv_shortcut), (cin, r, r), i, part))
        cin = s.channels
    if s.transformer_depth > 0:
        out.append(Block(transformer_sig(spec, s, cin), (cin, r, r), i, part))
    return out


def unet_blocks(spec: ArchSpec, latent_size: int) -> list[Block]:
    """Every block of ``SnapGenUNet(spec)`` in execution order, with fixed parts and skip concats."""
    st, n, L = spec.stages, spec.num_stages, latent_size
    c0 = st[0].channels
    blocks = [Block(dict(type="conv_in", conv=spec.io_conv, cin=spec.latent_channels, cout=c0), (spec.latent_channels, L, L), -1, "io"),
              Block(dict(type="temb", base=c0, dim=spec.time_embed_dim, pooled=spec.pooled_dim), (c0, 1, 1), -1, "io")]
    skips, cin, r = [c0], c0, L
    for i, s in enumerate(st):
        for _ in range(s.layers):
            blocks += _layer(spec, i, cin, r, "down")
            cin = s.channels
            skips.append(cin)
        if i < n - 1:
            blocks.append(Block(dict(type="down", cin=cin, cout=cin, conv=spec.sampling_conv), (cin, r, r), i, "down"))
            skips.append(cin)
            r //= 2
    last = st[-1]
    if spec.mid_block:
        blocks += _layer(spec, n - 1, cin, r, "mid")
        if last.transformer_depth and last.res_block:
            blocks.append(Block(res_sig(cin, cin, spec.time_embed_dim, last.conv, last.conv_expansion, last.norm,
                                        last.conv_shortcut), (cin, r, r), n - 1, "mid"))
    for i in reversed(range(n)):
        s = st[i]
        for _ in range(s.layers + 1):
            skip = skips.pop()
            blocks.append(Block(dict(type="cat", c1=cin, c2=skip), (cin + skip, r, r), i, "up"))
            blocks += _layer(spec, i, cin + skip, r, "up")
            cin = s.channels
        if i > 0:
            blocks.append(Block(dict(type="up", cin=cin, cout=cin, conv=spec.sampling_conv), (cin, r, r), i, "up"))
            r *= 2
    blocks.append(Block(dict(type="norm_out", norm=st[0].norm, c=c0), (c0, L, L), -1, "io"))
    blocks.append(Block(dict(type="conv_out", conv=spec.io_conv, cin=c0, cout=spec.latent_channels), (c0, L, L), -1, "io"))
    return blocks


def decoder_blocks(spec, latent_size: int) -> list[Block]:
    """Every block of ``TinyDecoder(spec)`` in execution order."""
    c, L = spec.channels, latent_size
    blocks = [Block(dict(type="conv_in", conv="regular", cin=spec.latent_channels, cout=c[0]),
                    (spec.latent_channels, L, L), -1, "io")]
    r = L
    for i, ch in enumerate(c):
        if i > 0:
            blocks.append(Block(dict(type="up", cin=c[i - 1], cout=ch, conv=spec.conv), (c[i - 1], r, r), i, "stage"))
            r *= 2
        for _ in range(spec.blocks[i]):
            blocks.append(Block(res_sig(ch, ch, 0, spec.conv, spec.conv_expansion, spec.norm[i], spec.conv_shortcut),
                                (ch, r, r), i, "stage"))
    blocks.append(Block(dict(type="norm_out", norm=spec.norm_out, c=c[-1]), (c[-1], r, r), -1, "io"))
    blocks.append(Block(dict(type="conv_out", conv="regular", cin=c[-1], cout=spec.out_channels), (c[-1], r, r), -1, "io"))
    return blocks


def blocks_of(spec, latent_size: int) -> list[Block]:
    from snapgen.decoder import DecoderSpec

    if isinstance(spec, ArchSpec):
        return unet_blocks(spec, latent_size)
    if isinstance(spec, DecoderSpec):
        return decoder_blocks(spec, latent_size)
    from snapgen.errors import UserError

    raise UserError(f"lookup tables cover SnapGen UNets and tiny decoders, not {getattr(spec, 'name', spec)!r} "
                    "(a diffusers AutoencoderKL decoder): measure it instead", key="spec")
