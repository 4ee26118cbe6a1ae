"""The SnapGen UNet, built from an :class:`~snapgen.spec.ArchSpec`.

Layout follows SDXL's UNet (and so diffusers' ``UNet2DConditionModel``), as
:func:`snapgen.plan.unet_plan` lists it: conv_in, per stage ``layers`` x [ResBlock + SpatialTransformer]
then a strided downsample, a mid block [ResBlock, SpatialTransformer, ResBlock], and mirrored up
stages with ``layers + 1`` layers that take the skip connections. Weights and spec round-trip through ``save_pretrained`` /
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

from snapgen.hub import DiffusersModel
from snapgen.plan import build_into, unet_plan
from snapgen.spec import ArchSpec


@dataclass
class SnapGenUNetOutput(BaseOutput):
    """``sample``: the predicted velocity (or noise); ``features``: with ``return_features``, the
    mid-block and up-stage outputs ``{"mid": ..., "up.{i}": ...}``."""

    sample: torch.Tensor
    features: dict[str, torch.Tensor] | None = None


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
        self.plan = unet_plan(spec)
        build_into(self, self.plan, spec.norm_groups, 1e-5)
        if not hasattr(self, "mid"):
            self.mid = nn.ModuleList()  # mid_block: false

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

SnapGenUNet.register_for_auto_class("AutoModel")  # config.json's auto_map (diffusers' public way)

