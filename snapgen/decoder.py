"""Decoders: the paper's tiny decoder (§3.2) from a :class:`DecoderSpec`, and the SD3 / SDXL
baseline decoders as diffusers ``AutoencoderKL`` models built from their configs.

Both are VAEs to a pipeline: ``decode(z, return_dict=True) -> DecoderOutput(sample=...)`` and
``config.scaling_factor`` / ``shift_factor`` / ``latent_channels`` / ``block_out_channels``. What
cost, latency and Core ML export measure is the decode path alone (:func:`decode_path`): the tiny
decoder itself, or an ``AutoencoderKL``'s ``post_quant_conv`` + ``decoder`` (its encoder is not
part of decoding).

Tiny decoder design (paper §3.2): no attention, GroupNorm only where the spec keeps it, separable
convs, fewer residual blocks at high resolution, no conv shortcut — the upsampling layer carries
each channel transition.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_utils import ModelMixin

from snapgen.errors import UserError
from snapgen.blocks.registry import FIELD_REGISTRY
from snapgen.hub import DiffusersModel
from snapgen.plan import build_into, decoder_plan
from snapgen.spec import check_choices, spec_key


@dataclass(frozen=True)
class DecoderSpec:
    """Tiny decoder; stages run from the latent resolution up, one 2x upsample between stages."""

    channels: tuple[int, ...]
    blocks: tuple[int, ...]
    norm: tuple[str, ...]  # per stage: groupnorm | layernorm | rmsnorm | none
    name: str = "custom"
    latent_channels: int = 16
    out_channels: int = 3
    conv: str = "separable"
    conv_expansion: float = 2.0
    norm_groups: int = 8
    conv_shortcut: bool = False
    norm_out: str = "groupnorm"

    @property
    def upscale(self) -> int:
        return 2 ** (len(self.channels) - 1)

    def validate(self, file: str | None = None) -> "DecoderSpec":
        n = len(self.channels)
        if n == 0:
            raise UserError("at least one stage is required", file=file, key="channels")
        for key in ("blocks", "norm"):
            if len(getattr(self, key)) != n:
                raise UserError(f"has {len(getattr(self, key))} values for {n} stages", file=file, key=key)
        for i, (c, b, nm) in enumerate(zip(self.channels, self.blocks, self.norm)):
            if c <= 0:
                raise UserError(f"must be positive, got {c}", file=file, key=f"channels[{i}]")
            if b < 0:
                raise UserError(f"must be >= 0, got {b}", file=file, key=f"blocks[{i}]")
            FIELD_REGISTRY["norm"].check(nm, file=file, key=f"norm[{i}]")
            if nm == "groupnorm" and c % self.norm_groups:
                raise UserError(f"{c} is not divisible by norm_groups={self.norm_groups}", file=file, key=f"channels[{i}]")
        check_choices(self, ("conv", "norm_out"), file=file)
        if self.norm_out == "groupnorm" and self.channels[-1] % self.norm_groups:
            raise UserError(f"{self.channels[-1]} is not divisible by norm_groups={self.norm_groups}", file=file,
                            key="norm_out")
        if self.latent_channels <= 0 or self.out_channels <= 0:
            raise UserError("latent_channels and out_channels must be positive", file=file, key="latent_channels")
        return self

    key = spec_key

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, file: str | None = None) -> "DecoderSpec":
        """From a mapping where ``channels`` / ``blocks`` / ``norm`` may be a scalar (every stage) or a list."""
        from snapgen.config import structured

        if not isinstance(data, Mapping):
            raise UserError("a decoder spec must be a mapping", file=file)
        d = dict(data)
        n = len(d["channels"]) if isinstance(d.get("channels"), (list, tuple)) else 1
        for k in ("channels", "blocks", "norm"):
            if k in d and not isinstance(d[k], (list, tuple)):
                d[k] = [d[k]] * n
        return structured(cls, d, file=file).validate(file)


class TinyDecoder(DiffusersModel, ModelMixin, ConfigMixin):
    """``forward(z)`` and ``decode(z)`` take latents in the diffusion space (the normalised latents
    the UNet denoises and ``snapgen train stage=decoder`` trains on), so its ``scaling_factor`` is 1
    and ``shift_factor`` 0 unless it was trained on raw latents."""

    config_name = "config.json"
    derived_config = ("latent_channels", "out_channels", "block_out_channels")

    @register_to_config
    def __init__(self, arch: dict[str, Any], scaling_factor: float = 1.0, shift_factor: float = 0.0):
        super().__init__()
        spec = DecoderSpec.from_dict(arch)
        self.spec = spec
        # diffusers' VAE keys; block_out_channels high resolution first, as AutoencoderKL lists them
        self.register_to_config(latent_channels=spec.latent_channels, out_channels=spec.out_channels,
                                block_out_channels=list(reversed(spec.channels)))
        self.plan = decoder_plan(spec)
        build_into(self, self.plan, spec.norm_groups, 1e-6, leaf=nn.Sequential)

    @classmethod
    def from_spec(cls, spec: DecoderSpec) -> "TinyDecoder":
        return cls(arch=spec.to_dict())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # Channels-last throughout (2x faster separable convs on a CPU); the image comes back NCHW.
        h = self.conv_in(z.contiguous(memory_format=torch.channels_last))
        for stage in self.stages:
            h = stage(h)
        return self.conv_out(F.silu(self.norm_out(h))).contiguous()

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        """The VAE interface of a pipeline: latents -> images in [-1, 1] (not clamped)."""
        x = self.forward(z)
        return DecoderOutput(sample=x) if return_dict else (x,)


TinyDecoder.register_for_auto_class("AutoModel")


@dataclass(frozen=True)
class AutoencoderKLSpec:
    """A baseline decoder given as a diffusers ``AutoencoderKL`` config (SD3, SDXL)."""

    config: Mapping[str, Any]
    name: str = "autoencoder_kl"

    @property
    def latent_channels(self) -> int:
        return int(self.config.get("latent_channels", 4))

    @property
    def upscale(self) -> int:
        return 2 ** (len(self.config.get("block_out_channels", (64,))) - 1)

    def to_dict(self) -> dict[str, Any]:
        return {"autoencoder_kl": dict(self.config)}

    key = spec_key


def build_autoencoder_kl(spec: AutoencoderKLSpec):
    """The diffusers ``AutoencoderKL`` of a baseline decoder config (random weights)."""
    from diffusers import AutoencoderKL

    try:
        return AutoencoderKL(**spec.config)
    except TypeError as e:
        raise UserError(f"invalid AutoencoderKL config: {e}", key=f"{spec.name}.autoencoder_kl") from None


class AutoencoderKLDecoder(nn.Module):
    """The decode path of a diffusers ``AutoencoderKL`` as one module: its ``post_quant_conv`` (when the
    config has one) and ``decoder``, shared with ``vae`` (not copied). ``forward(z)`` is
    ``vae.decode(z).sample``; its parameters are exactly those decoding uses (the encoder's are not)."""

    def __init__(self, vae):
        super().__init__()
        self.post_quant_conv = vae.post_quant_conv if vae.post_quant_conv is not None else nn.Identity()
        self.decoder = vae.decoder

    def forward(self, z):
        return self.decoder(self.post_quant_conv(z))


def build_decoder(spec: DecoderSpec | AutoencoderKLSpec) -> nn.Module:
    """A :class:`TinyDecoder`, or the baseline's ``AutoencoderKL``; :func:`decode_path` gives what to cost or time."""
    if isinstance(spec, DecoderSpec):
        return TinyDecoder.from_spec(spec)
    return build_autoencoder_kl(spec)


def decode_path(model: nn.Module) -> nn.Module:
    """The module that decodes ``z`` when called, holding only the parameters decoding uses: a tiny
    decoder itself, an ``AutoencoderKL``'s :class:`AutoencoderKLDecoder`."""
    if isinstance(model, (TinyDecoder, AutoencoderKLDecoder)):
        return model
    from diffusers import AutoencoderKL

    if isinstance(model, AutoencoderKL):
        return AutoencoderKLDecoder(model)
    raise TypeError(f"not a decoder: {type(model).__name__}")
