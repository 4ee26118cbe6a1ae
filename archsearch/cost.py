"""Params and FLOPs, counted with fvcore (one multiply-add = one FLOP: the paper's convention).

fvcore leaves ``aten::scaled_dot_product_attention`` and ``aten::baddbmm`` uncounted; we register
handles for both so attention matmuls are counted, and report them as their own line
(``gflops_attention``), so both conventions (with and without attention) stay visible.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from math import prod
from typing import Any, Callable

import warnings

import torch
import torch.nn as nn

with warnings.catch_warnings():  # fvcore's import calls the deprecated torch.jit.script
    warnings.simplefilter("ignore", FutureWarning)
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import get_shape

ATTENTION_OPS = ("aten::scaled_dot_product_attention", "aten::baddbmm")


def _sdpa_flop(inputs: list[Any], outputs: list[Any]) -> int:
    # q: (..., Lq, d), k: (..., Lk, d), v: (..., Lk, dv): QK^T + AV multiply-adds.
    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def _baddbmm_flop(inputs: list[Any], outputs: list[Any]) -> int:
    # baddbmm(input, batch1 (b,n,m), batch2 (b,m,p))
    b1, b2 = get_shape(inputs[1]), get_shape(inputs[2])
    return b1[0] * b1[1] * b1[2] * b2[2]


HANDLES: dict[str, Callable] = {
    "aten::scaled_dot_product_attention": _sdpa_flop,
    "aten::baddbmm": _baddbmm_flop,
}


@dataclass
class FlopReport:
    total: int
    attention: int
    by_module: dict[str, int]


def count_flops(model: nn.Module, inputs: tuple, count_attention: bool = True) -> FlopReport:
    """fvcore FLOPs (multiply-adds) of ``model(*inputs)``; attention matmuls counted apart."""
    model = model.eval()
    with torch.no_grad():
        fca = FlopCountAnalysis(model, inputs)
        if count_attention:
            fca = fca.set_op_handle(**{k: v for k, v in HANDLES.items()})
        fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        logging.getLogger("fvcore").setLevel(logging.ERROR)
        total = fca.total()
        by_op = fca.by_operator()
        attn = sum(by_op.get(op.split("::")[1], 0) for op in ATTENTION_OPS)
        by_module = dict(fca.by_module())
    return FlopReport(total=int(total), attention=int(attn), by_module=by_module)


@dataclass
class CostReport:
    """What ``archsearch cost --json`` prints."""

    name: str
    params: int
    gflops: float  # attention matmuls included
    gflops_attention: float  # the attention-matmul part of gflops
    latent_size: int
    per_stage: dict[str, dict[str, float]] = field(default_factory=dict)
    kind: str = "unet"

    @property
    def gflops_no_attention(self) -> float:
        return self.gflops - self.gflops_attention

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["gflops_no_attention"] = self.gflops_no_attention
        return d


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _group(named: dict[str, int], stage_of: Callable[[str], str]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for name, v in named.items():
        out[stage_of(name)] += v
    return dict(out)


def unet_inputs(spec, latent_size: int, context_len: int = 77, batch: int = 1) -> tuple:
    x = torch.zeros(batch, spec.latent_channels, latent_size, latent_size)
    t = torch.full((batch,), 500.0)
    ctx = torch.zeros(batch, context_len, spec.context_dim) if spec.context_dim else None
    if spec.pooled_dim:
        return (x, t, ctx, torch.zeros(batch, spec.pooled_dim))
    return (x, t, ctx)


def unet_cost(spec, latent_size: int = 128, context_len: int = 77) -> CostReport:
    """Cost of the full-size UNet for one forward pass at batch 1 (the paper's convention)."""
    from snapgen.unet import SnapGenUNet

    # Build on the meta device? fvcore needs real tensors to trace; weights are allocated once.
    model = SnapGenUNet.from_spec(spec)
    rep = count_flops(model, unet_inputs(spec, latent_size, context_len))
    top = {"conv_in", "conv_out", "norm_out", "time_embedding", "mid"}
    leaf = {n: v for n, v in rep.by_module.items()
            if n in top or (n.count(".") == 1 and n.split(".")[0] in ("down", "up"))}
    flops_by_stage = _group(leaf, model.stage_of)
    params_by_stage = _group({n: p.numel() for n, p in model.named_parameters()}, model.stage_of)
    per_stage = {k: {"params": params_by_stage.get(k, 0), "gflops": flops_by_stage.get(k, 0) / 1e9}
                 for k in sorted(set(flops_by_stage) | set(params_by_stage))}
    return CostReport(name=spec.name, params=num_params(model), gflops=rep.total / 1e9,
                      gflops_attention=rep.attention / 1e9, latent_size=latent_size, per_stage=per_stage)


def decoder_cost(spec, latent_size: int = 128) -> CostReport:
    """Cost of decoding one ``latent_size`` x ``latent_size`` latent (batch 1)."""
    from snapgen.decoder import build_decoder

    model = build_decoder(spec)
    rep = count_flops(model, (torch.zeros(1, spec.latent_channels, latent_size, latent_size),))

    def stage_of(name: str) -> str:
        parts = name.split(".")
        if parts[0] == "stages":
            return f"stage{parts[1]}"
        if parts[0] == "decoder" and len(parts) > 1 and parts[1] in ("up_blocks", "mid_block"):
            return f"{parts[1]}.{parts[2]}" if parts[1] == "up_blocks" else "mid_block"
        return "io"

    def is_top(name: str) -> bool:
        parts = name.split(".")
        if parts[0] == "stages":
            return len(parts) == 2
        if parts[0] == "decoder":
            return (len(parts) == 3 and parts[1] == "up_blocks") or (len(parts) == 2 and parts[1] != "up_blocks")
        return len(parts) == 1 and parts[0] not in ("", "decoder", "stages")

    flops_by_stage = _group({n: v for n, v in rep.by_module.items() if n and is_top(n)}, stage_of)
    params_by_stage = _group({n: p.numel() for n, p in model.named_parameters()}, stage_of)
    per_stage = {k: {"params": params_by_stage.get(k, 0), "gflops": flops_by_stage.get(k, 0) / 1e9}
                 for k in sorted(set(flops_by_stage) | set(params_by_stage))}
    return CostReport(name=spec.name, params=num_params(model), gflops=rep.total / 1e9,
                      gflops_attention=rep.attention / 1e9, latent_size=latent_size, per_stage=per_stage,
                      kind="decoder")


def cost_of(spec, latent_size: int = 128, context_len: int = 77) -> CostReport:
    from snapgen.spec import ArchSpec

    if isinstance(spec, ArchSpec):
        return unet_cost(spec, latent_size, context_len)
    return decoder_cost(spec, latent_size)
