"""The SnapGen UNet, built from an :class:`~snapgen.spec.ArchSpec`.

Layout follows SDXL's UNet (and so diffusers' ``UNet2DConditionModel``): conv_in, per stage
``layers`` x [ResBlock + SpatialTransformer] then a strided downsample, a mid block
[ResBlock, SpatialTransformer, ResBlock], and mirrored up stages with ``layers + 1`` layers that
take the skip connections. Weights and spec round-trip through ``save_pretrained`` /
``from_pretrained`` (diffusers ``ModelMixin`` + ``ConfigMixin``); the config also carries diffusers'
usual keys (``in_channels``, ``out_channels``, ``sample_size``) and loads with
``diffusers.AutoModel.from_pretrained(dir, trust_remote_code=True)`` (see :mod:`snapgen.hub`).

``timestep`` follows diffusers' convention: values in [0, 1000]. ``forward`` follows diffusers'
UNets: it returns a :class:`SnapGenUNetOutput` (``.sample``), or a tuple with
``return_dict=False``, which is how every caller in this project that wants the tensor calls it:
``net(x, t, ctx, pooled=..., return_dict=False)[0]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

from snapgen.blocks import CONV, NORM, Downsample, ResBlock, SpatialTransformer, TimestepEmbedding, Upsample
from snapgen.hub import DiffusersModel
from snapgen.spec import ArchSpec, StageSpec


@dataclass
class SnapGenUNetOutput(BaseOutput):
    """``sample``: the predicted velocity (or noise); ``features``: with ``return_features``, the
    mid-block and up-stage outputs ``{"mid": ..., "up.{i}": ...}``."""

    sample: torch.Tensor
    features: dict[str, torch.Tensor] | None = None


def _layer(spec: ArchSpec, s: StageSpec, cin: int) -> nn.ModuleList:
    """One UNet layer: [ResBlock] + [SpatialTransformer]; cin -> s.channels."""
    mods = []
    if s.res_block:
        mods.append(ResBlock(cin, s.channels, temb_dim=spec.time_embed_dim, conv=s.conv, expansion=s.conv_expansion,
                             norm=s.norm, norm_groups=spec.norm_groups, conv_shortcut=s.conv_shortcut))
        cin = s.channels
    if s.transformer_depth > 0:
        mods.append(SpatialTransformer(
            cin, s.channels, s.transformer_depth, norm=s.norm, norm_groups=spec.norm_groups,
            head_dim=spec.head_dim, context_dim=spec.context_dim, self_attention=s.self_attention,
            cross_attention=s.cross_attention, ffn_ratio=s.ffn_ratio, ffn_gated=s.ffn_gated,
            attention=s.attention, kv_heads=s.kv_heads, qk_norm=s.qk_norm, pos_embed=s.pos_embed))
    return nn.ModuleList(mods)


class SnapGenUNet(DiffusersModel, ModelMixin, ConfigMixin):
    config_name = "config.json"
    derived_config = ("in_channels", "out_channels")

    @register_to_config
    def __init__(self, arch: dict[str, Any], sample_size: int | None = None):
        """``sample_size``: the latent height/width it was trained at (a pipeline's default size)."""
        super().__init__()
        spec = ArchSpec.from_dict(arch)
        self.spec = spec
        self.register_to_config(in_channels=spec.latent_channels, out_channels=spec.latent_channels)
        st = spec.stages
        n = len(st)
        c0 = st[0].channels
        self.conv_in = CONV.build(spec.io_conv, spec.latent_channels, c0)
        self.time_embedding = TimestepEmbedding(c0, spec.time_embed_dim, spec.pooled_dim)

        # Down path; remember the width of every skip connection.
        self.down = nn.ModuleList()
        skips = [c0]
        cin = c0
        for i, s in enumerate(st):
            stage = nn.ModuleDict()
            stage["layers"] = nn.ModuleList()
            for _ in range(s.layers):
                stage["layers"].append(_layer(spec, s, cin))
                cin = s.channels
                skips.append(cin)
            if i < n - 1:
                stage["sample"] = Downsample(cin, conv=spec.sampling_conv)
                skips.append(cin)
            self.down.append(stage)

        # Mid block.
        last = st[-1]
        self.mid = nn.ModuleList()
        if spec.mid_block:
            self.mid.append(_layer(spec, last, cin))
            if last.transformer_depth and last.res_block:
                self.mid.append(nn.ModuleList([ResBlock(cin, cin, temb_dim=spec.time_embed_dim, conv=last.conv,
                                                        expansion=last.conv_expansion, norm=last.norm,
                                                        norm_groups=spec.norm_groups,
                                                        conv_shortcut=last.conv_shortcut)]))

        # Up path: reversed stages, layers + 1 per stage, each consuming one skip.
        self.up = nn.ModuleList()
        for i, s in reversed(list(enumerate(st))):
            stage = nn.ModuleDict()
            stage["layers"] = nn.ModuleList()
            for _ in range(s.layers + 1):
                stage["layers"].append(_layer(spec, s, cin + skips.pop()))
                cin = s.channels
            if i > 0:
                stage["sample"] = Upsample(cin, conv=spec.sampling_conv)
            self.up.append(stage)
        assert not skips

        self.norm_out = NORM.build(st[0].norm, c0, spec.norm_groups, 1e-5)
        self.conv_out = CONV.build(spec.io_conv, c0, spec.latent_channels)

    @classmethod
    def from_spec(cls, spec: ArchSpec) -> "SnapGenUNet":
        return cls(arch=spec.to_dict())

    @staticmethod
    def _run(layer: nn.ModuleList, h, context, temb):
        for m in layer:
            h = m(h, context, temb)
        return h

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                pooled: torch.Tensor | None = None, return_features: bool = False, return_dict: bool = True):
        """Predict the velocity (or noise) for ``sample`` at ``timestep`` (in [0, 1000]).

        With ``return_features`` also returns ``{"mid": ..., "up.{i}": ...}``: the mid-block output
        and each up stage's output (before upsampling), for feature-level distillation.
        Returns :class:`SnapGenUNetOutput`, or with ``return_dict=False`` the tuple ``(sample,)``
        (``(sample, features)`` with ``return_features``).
        """
        if timestep.ndim == 0:
            timestep = timestep.expand(sample.shape[0])
        temb = self.time_embedding(timestep, pooled)
        ctx = encoder_hidden_states
        h = self.conv_in(sample)
        skips = [h]
        for stage in self.down:
            for layer in stage["layers"]:
                h = self._run(layer, h, ctx, temb)
                skips.append(h)
            if "sample" in stage:
                h = stage["sample"](h)
                skips.append(h)
        for layer in self.mid:
            h = self._run(layer, h, ctx, temb)
        feats = {"mid": h}
        n = len(self.up)
        for j, stage in enumerate(self.up):
            for layer in stage["layers"]:
                h = self._run(layer, torch.cat([h, skips.pop()], dim=1), ctx, temb)
            feats[f"up.{n - 1 - j}"] = h
            if "sample" in stage:
                h = stage["sample"](h)
        out = self.conv_out(F.silu(self.norm_out(h)))
        if not return_dict:
            return (out, feats) if return_features else (out,)
        return SnapGenUNetOutput(sample=out, features=feats if return_features else None)

    def stage_of(self, module_name: str) -> str:
        """Map a parameter/module name to the stage it belongs to (for per-stage breakdowns)."""
        parts = module_name.split(".")
        if parts[0] == "down":
            return f"stage{int(parts[1])}"
        if parts[0] == "up":
            return f"stage{len(self.up) - 1 - int(parts[1])}"
        if parts[0] == "mid":
            return "mid"
        return "io"


SnapGenUNet.register_for_auto_class("AutoModel")  # config.json's auto_map (diffusers' public way)


def build_unet(spec: ArchSpec) -> SnapGenUNet:
    return SnapGenUNet.from_spec(spec)
