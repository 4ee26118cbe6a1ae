"""Backbones a run trains (the SnapGen UNet; an SD3-style transformer for the embedded teacher) and
teachers a run distils from (any diffusers model by path or hub id, or a `snapgen train` output).

Every backbone and teacher is called as ``net(x, t1000, ctx, pooled) -> velocity`` and, through
:class:`Teacher`, also yields a list of intermediate feature maps ``(B, C, h, w)`` for
feature-level distillation: the SnapGen UNet's ``mid`` and up-stage outputs, an SD3 transformer's
per-block image tokens folded back to the patch grid, a diffusers UNet's mid and up blocks.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from snapgen.errors import UserError

SD3_DEFAULT = dict(patch_size=2, num_layers=4, attention_head_dim=32, num_attention_heads=4,
                   caption_projection_dim=128, pos_embed_max_size=16)


def sd3_config(overrides: dict, *, latent_channels: int, latent_size: int, context_dim: int) -> dict:
    cfg = dict(SD3_DEFAULT)
    cfg.update(overrides or {})
    cfg.update(sample_size=latent_size, in_channels=latent_channels, out_channels=latent_channels,
               joint_attention_dim=context_dim, pooled_projection_dim=context_dim)
    return cfg


def build_sd3(config: dict):
    from diffusers import SD3Transformer2DModel

    try:
        return SD3Transformer2DModel(**config)
    except TypeError as e:
        raise UserError(f"invalid SD3Transformer2DModel config: {e}", key="sd3") from None


def call(net: nn.Module, x, t1000, ctx, pooled):
    """One velocity prediction of any supported backbone (SnapGen UNet, SD3 / diffusers models)."""
    from snapgen.unet import SnapGenUNet

    if isinstance(net, SnapGenUNet):
        return net(x, t1000, ctx, pooled=pooled if net.spec.pooled_dim else None, return_dict=False)[0]
    name = type(net).__name__
    if name == "SD3Transformer2DModel":
        return net(hidden_states=x, encoder_hidden_states=ctx, pooled_projections=pooled, timestep=t1000,
                   return_dict=False)[0]
    if name == "UNet2DConditionModel":
        return net(x, t1000, encoder_hidden_states=ctx, return_dict=False)[0]
    raise UserError(f"unsupported teacher model class {name}; supported: SnapGenUNet, SD3Transformer2DModel, "
                    "UNet2DConditionModel", key="teacher.path")


class Teacher(nn.Module):
    """A frozen model plus forward hooks that collect its feature maps."""

    def __init__(self, net: nn.Module, source: str = ""):
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.source = source
        self._feats: list[torch.Tensor] = []
        self._hooks = []
        name = type(net).__name__
        self.kind = name
        if name == "SD3Transformer2DModel":
            p = net.config.patch_size

            def hook(mod, inp, out):
                h = out[1] if isinstance(out, tuple) else out  # (encoder_hidden_states, hidden_states)
                b, n, c = h.shape
                s = int(round(n ** 0.5))
                self._feats.append(h.transpose(1, 2).reshape(b, c, s, s))

            for blk in net.transformer_blocks:
                self._hooks.append(blk.register_forward_hook(hook))
            self.patch = p
        elif name == "UNet2DConditionModel":
            def hook(mod, inp, out):
                self._feats.append(out[0] if isinstance(out, tuple) else out)

            for blk in [net.mid_block, *net.up_blocks]:
                self._hooks.append(blk.register_forward_hook(hook))

    def forward(self, x, t1000, ctx, pooled, features: bool = False):
        from snapgen.unet import SnapGenUNet

        self._feats = []
        if isinstance(self.net, SnapGenUNet):
            v, f = self.net(x, t1000, ctx, pooled=pooled if self.net.spec.pooled_dim else None, return_features=True,
                            return_dict=False)
            feats = list(f.values())
        else:
            v = call(self.net, x, t1000, ctx, pooled)
            feats = self._feats
        self._feats = []
        return (v, feats) if features else v


def _load_dir(d: Path, subfolder: str | None):
    cfg_file = d / (subfolder or "") / "config.json"
    if not cfg_file.is_file():
        raise UserError("no config.json: not a diffusers model directory (give subfolder= for a pipeline)",
                        file=str(d), key="teacher.path")
    try:
        cls_name = json.loads(cfg_file.read_text()).get("_class_name")
    except (OSError, ValueError) as e:
        raise UserError(f"unreadable config.json: {e}", file=str(cfg_file), key="teacher.path") from None
    return _from_pretrained(cls_name, str(d), subfolder, local=True)


def _from_pretrained(cls_name: str | None, src: str, subfolder: str | None, *, local: bool):
    import diffusers

    from snapgen.unet import SnapGenUNet

    cls = SnapGenUNet if cls_name == "SnapGenUNet" else getattr(diffusers, cls_name or "", None)
    if cls is None:
        raise UserError(f"unknown model class {cls_name!r} in config.json", file=src, key="teacher.path")
    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()  # no "accelerate not found" advice on every load
    try:
        return cls.from_pretrained(src, subfolder=subfolder, local_files_only=local, low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError, EnvironmentError) as e:
        raise UserError(f"cannot load {cls_name}: {str(e).splitlines()[0][:300]}", file=src,
                        key="teacher.path") from None
    finally:
        dlogging.set_verbosity(level)


def load_teacher(path: str, subfolder: str | None = None) -> Teacher:
    """A teacher by local path (a diffusers model directory, a pipeline with ``subfolder``, or a
    `snapgen train` output_dir) or hub id (``owner/name``, with ``subfolder``)."""
    p = Path(path).expanduser()
    if p.exists():
        if (p / "training_options.json").is_file() and (p / "model" / "config.json").is_file():
            p = p / "model"
        if not p.is_dir():
            raise UserError("not a model directory", file=str(p), key="teacher.path")
        return Teacher(_load_dir(p, subfolder), str(path))
    looks_hub = path.count("/") == 1 and not path.startswith((".", "/", "~"))
    if not looks_hub:
        raise UserError("teacher path does not exist", file=path, key="teacher.path")
    cls_name = None
    try:
        from huggingface_hub import hf_hub_download

        f = hf_hub_download(path, "config.json", subfolder=subfolder)
        cls_name = json.loads(Path(f).read_text()).get("_class_name")
    except Exception as e:  # offline, unknown repository
        raise UserError(f"teacher path does not exist and the hub id cannot be resolved: "
                        f"{type(e).__name__}: {str(e).splitlines()[0][:200]}", file=path, key="teacher.path") from None
    return Teacher(_from_pretrained(cls_name, path, subfolder, local=False), path)
