"""Modules, example inputs and per-stage grouping for what the latency backends measure."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from snapgen.spec import ArchSpec


def spec_kind(spec) -> str:
    return "unet" if isinstance(spec, ArchSpec) else "decoder"


def example_inputs(spec, latent_size: int, context_len: int = 77, seed: int = 0) -> tuple[tuple, list[str]]:
    """Batch-1 inputs (random, seeded) and their names."""
    g = torch.Generator().manual_seed(seed)
    if isinstance(spec, ArchSpec):
        x = torch.randn(1, spec.latent_channels, latent_size, latent_size, generator=g)
        t = torch.full((1,), 500.0)
        ctx = torch.randn(1, context_len, spec.context_dim, generator=g) if spec.context_dim else None
        if spec.pooled_dim:
            return (x, t, ctx, torch.randn(1, spec.pooled_dim, generator=g)), ["sample", "timestep",
                                                                                "encoder_hidden_states", "pooled"]
        return (x, t, ctx), ["sample", "timestep", "encoder_hidden_states"]
    return (torch.randn(1, spec.latent_channels, latent_size, latent_size, generator=g),), ["latent"]


def build_module(spec) -> nn.Module:
    if isinstance(spec, ArchSpec):
        from snapgen.unet import SnapGenUNet

        return SnapGenUNet.from_spec(spec).eval()
    from snapgen.decoder import build_decoder, decode_path

    return decode_path(build_decoder(spec)).eval()


def stage_groups(model: nn.Module) -> dict[str, list[tuple[str, nn.Module]]]:
    """The top-level blocks of a model, grouped by stage label (for the per-stage breakdown).

    UNet and tiny decoder: every block of their :func:`snapgen.plan.plan` with a module, by its stage
    label (down and up halves of a stage together). diffusers AutoencoderKL decoder: mid block and
    each up block.
    """
    from snapgen.decoder import AutoencoderKLDecoder, TinyDecoder
    from snapgen.unet import SnapGenUNet

    groups: dict[str, list[tuple[str, nn.Module]]] = {}

    def add(label: str, name: str, m: nn.Module):
        groups.setdefault(label, []).append((name, m))

    if isinstance(model, (SnapGenUNet, TinyDecoder)):
        for b in model.plan:
            if b.path:
                name = ".".join(map(str, b.path))
                add(b.label(), name, model.get_submodule(name))
    elif isinstance(model, AutoencoderKLDecoder):
        dec = model.decoder
        add("io", "post_quant_conv", model.post_quant_conv)
        for name, m in dec.named_children():
            if name == "up_blocks":
                for i, b in enumerate(m):
                    add(f"up_blocks.{i}", f"decoder.up_blocks.{i}", b)
            elif name == "mid_block":
                add("mid_block", "decoder.mid_block", m)
            else:
                add("io", f"decoder.{name}", m)
    else:
        for name, m in model.named_children():
            add(name, name, m)
    return groups


class StageTimer:
    """Forward hooks that add up wall-clock time per stage group (synchronising the device at
    each block boundary, so it runs in a separate pass from the end-to-end timing)."""

    def __init__(self, groups: dict[str, list[tuple[str, nn.Module]]], sync=lambda: None, clock: str = "wall"):
        import time

        self._clock = time.process_time if clock == "cpu" else time.perf_counter
        self.sync = sync
        self.totals: dict[str, float] = {k: 0.0 for k in groups}
        self._start: dict[int, float] = {}
        self._handles = []
        for label, mods in groups.items():
            for _, m in mods:
                self._handles.append(m.register_forward_pre_hook(self._pre))
                self._handles.append(m.register_forward_hook(self._post(label)))

    def _pre(self, m, args):
        self.sync()
        self._start[id(m)] = self._clock()

    def _post(self, label: str):
        def hook(m, args, out):
            self.sync()
            self.totals[label] += self._clock() - self._start.pop(id(m))

        return hook

    def reset(self):
        self.totals = {k: 0.0 for k in self.totals}

    def remove(self):
        for h in self._handles:
            h.remove()


def stage_order(label: str) -> Any:
    order = {"io": (0, 0), "mid": (2, 0), "mid_block": (0, 1)}
    if label in order:
        return order[label]
    digits = "".join(ch for ch in label if ch.isdigit())
    return (1, int(digits) if digits else 0, label)
