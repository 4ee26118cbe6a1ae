"""Params and FLOPs, counted with fvcore (one multiply-add = one FLOP: the paper's convention).

fvcore leaves ``aten::scaled_dot_product_attention`` and ``aten::baddbmm`` uncounted; we register
handles for both so attention matmuls are counted, and report them as their own line
(``gflops_attention``), so both conventions (with and without attention) stay visible.
"""
from __future__ import annotations

import logging
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


def _analysis(model: nn.Module, inputs: tuple, count_attention: bool) -> FlopCountAnalysis:
    fca = FlopCountAnalysis(model.eval(), inputs)
    if count_attention:
        fca = fca.set_op_handle(**HANDLES)
    fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    return fca


def _is_attention(op: str) -> bool:
    return any(op == a.split("::")[1] for a in ATTENTION_OPS)


def _report(by_mod_op: dict[str, dict[str, int]]) -> FlopReport:
    total = sum(by_mod_op.get("", {}).values())
    attn = sum(v for op, v in by_mod_op.get("", {}).items() if _is_attention(op))
    by_module = {m: int(sum(ops.values())) for m, ops in by_mod_op.items()}
    return FlopReport(total=int(total), attention=int(attn), by_module=by_module)


def count_flops(model: nn.Module, inputs: tuple, count_attention: bool = True) -> FlopReport:
    """fvcore FLOPs (multiply-adds) of ``model(*inputs)``; attention matmuls counted apart."""
    with torch.no_grad():
        fca = _analysis(model, inputs, count_attention)
        return _report({m: dict(ops) for m, ops in fca.by_module_and_operator().items()})


def count_flops_at(model: nn.Module, make_inputs: Callable[[int], tuple], size: int, small: tuple[int, int]) -> FlopReport:
    """FLOPs at spatial ``size`` from two exact fvcore counts at the ``small`` sizes.

    Not an approximation: with batch and context fixed, every counted op of these models is
    either constant in the spatial size (time-embedding MLPs), proportional to the number of
    pixels L^2 (convs, linears on tokens, norms, resampling, cross-attention against a fixed
    context), or — self-attention matmuls — proportional to L^2 x L^2. So each
    (module, operator) count is ``a L^2 + b`` (non-attention) or ``c L^4 + d L^2`` (attention),
    and two sizes determine it. Hand-written because fvcore has no such extrapolation; tests
    hold it against a direct count. It turns a 10-40 s trace at 128x128 into two sub-second ones.
    """
    l1, l2 = small
    if size <= l2:
        return count_flops(model, make_inputs(size))
    with torch.no_grad():
        c1 = {m: dict(o) for m, o in _analysis(model, make_inputs(l1), True).by_module_and_operator().items()}
        c2 = {m: dict(o) for m, o in _analysis(model, make_inputs(l2), True).by_module_and_operator().items()}
    a1, a2, a = l1 * l1, l2 * l2, size * size
    out: dict[str, dict[str, int]] = {}
    for m in set(c1) | set(c2):
        ops = {}
        for op in set(c1.get(m, {})) | set(c2.get(m, {})):
            v1, v2 = c1.get(m, {}).get(op, 0), c2.get(m, {}).get(op, 0)
            if _is_attention(op):
                c = (v2 / a2 - v1 / a1) / (a2 - a1)
                d = v1 / a1 - c * a1
                ops[op] = int(round(c * a * a + d * a))
            else:
                k = (v2 - v1) / (a2 - a1)
                ops[op] = int(round(k * a + (v1 - k * a1)))
        out[m] = ops
    return _report(out)


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


def _per_stage(model: nn.Module, rep: FlopReport) -> dict[str, dict[str, float]]:
    """Params and GFLOPs per stage label: the blocks of the model's plan (UNet, tiny decoder) or a
    diffusers decoder's mid and up blocks, as :func:`archsearch.latency.models.stage_groups` groups them."""
    from archsearch.latency.models import stage_groups

    out = {label: {"params": sum(p.numel() for _, m in mods for p in m.parameters()),
                   "gflops": sum(rep.by_module.get(n, 0) for n, _ in mods) / 1e9}
           for label, mods in stage_groups(model).items()}
    return dict(sorted(out.items()))


def unet_inputs(spec, latent_size: int, context_len: int = 77, batch: int = 1) -> tuple:
    x = torch.zeros(batch, spec.latent_channels, latent_size, latent_size)
    t = torch.full((batch,), 500.0)
    ctx = torch.zeros(batch, context_len, spec.context_dim) if spec.context_dim else None
    if spec.pooled_dim:
        return (x, t, ctx, torch.zeros(batch, spec.pooled_dim))
    return (x, t, ctx)


def _fast_build(build: Callable[[], nn.Module]) -> nn.Module:
    """Build without running weight init (meta device, then zero-filled storage): FLOPs and
    params depend on shapes only, and random init of a 600M-param model costs seconds."""
    with torch.device("meta"):
        model = build()
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            t.zero_()
    return model


def _small_sizes(num_downsamples: int) -> tuple[int, int]:
    base = 2 ** num_downsamples
    return 2 * base, 4 * base


def unet_cost(spec, latent_size: int = 128, context_len: int = 77) -> CostReport:
    """Cost of the full-size UNet for one forward pass at batch 1 (the paper's convention)."""
    from snapgen.unet import SnapGenUNet

    model = _fast_build(lambda: SnapGenUNet.from_spec(spec))
    rep = count_flops_at(model, lambda L: unet_inputs(spec, L, context_len), latent_size,
                         _small_sizes(spec.num_stages - 1))
    per_stage = _per_stage(model, rep)
    return CostReport(name=spec.name, params=num_params(model), gflops=rep.total / 1e9,
                      gflops_attention=rep.attention / 1e9, latent_size=latent_size, per_stage=per_stage)


def decoder_cost(spec, latent_size: int = 128) -> CostReport:
    """Cost of decoding one ``latent_size`` x ``latent_size`` latent (batch 1)."""
    from snapgen.decoder import build_decoder, decode_path

    model = decode_path(_fast_build(lambda: build_decoder(spec)))  # an AutoencoderKL's encoder is not decoding
    rep = count_flops_at(model, lambda L: (torch.zeros(1, spec.latent_channels, L, L),), latent_size, (4, 8))

    per_stage = _per_stage(model, rep)
    return CostReport(name=spec.name, params=num_params(model), gflops=rep.total / 1e9,
                      gflops_attention=rep.attention / 1e9, latent_size=latent_size, per_stage=per_stage,
                      kind="decoder")


def cost_of(spec, latent_size: int = 128, context_len: int = 77) -> CostReport:
    from snapgen.spec import ArchSpec

    if isinstance(spec, ArchSpec):
        return unet_cost(spec, latent_size, context_len)
    return decoder_cost(spec, latent_size)
