"""Core ML export: ``.mlpackage`` ML programs for the UNet and the decoder.

coremltools converts and saves on any OS; loading for prediction needs macOS. Defaults: fp16
compute precision, iOS 17 / macOS 14 deployment target, fixed input shapes (batch 1), the
transformer blocks re-expressed in the Neural-Engine-friendly split-einsum layout
(:mod:`snapgen.export.ane`); optional k-means weight palettization
(``coremltools.optimize.coreml.palettize_weights``).
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from snapgen.errors import UserError

ATTENTION_LAYOUTS = ("split_einsum", "original")
PRECISIONS = ("float16", "float32")
TARGETS = ("iOS16", "iOS17", "iOS18")
PALETTE_BITS = (1, 2, 3, 4, 6, 8)


def _ct():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.getLogger("coremltools").setLevel(logging.ERROR)
            import coremltools as ct
    except ImportError:
        raise UserError("Core ML export needs coremltools: pip install 'snapgen-archsearch[export]'",
                        key="--format") from None
    return ct


class _Positional(nn.Module):
    """Trace wrapper: positional tensor inputs, one tensor out."""

    def __init__(self, model: nn.Module, n_inputs: int):
        super().__init__()
        self.model, self.n = model, n_inputs

    def forward(self, *args):
        out = self.model(*args)
        return out[0] if isinstance(out, (tuple, list)) else getattr(out, "sample", out)


def convert_module(module: nn.Module, example_inputs: Sequence[torch.Tensor], input_names: Sequence[str],
                   output_names: Sequence[str] = ("output",), *, precision: str = "float16", target: str = "iOS17",
                   palettize_bits: int | None = None, metadata: dict[str, Any] | None = None):
    """Trace ``module(*example_inputs)`` and convert it to a Core ML ML program (``ct.models.MLModel``)."""
    ct = _ct()
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; allowed: {', '.join(PRECISIONS)}", key="--precision")
    if target not in TARGETS:
        raise UserError(f"unknown deployment target {target!r}; allowed: {', '.join(TARGETS)}", key="--target")
    if palettize_bits is not None and palettize_bits not in PALETTE_BITS:
        raise UserError(f"must be one of {', '.join(map(str, PALETTE_BITS))}, got {palettize_bits}", key="--palettize")
    example_inputs = tuple(x.float() if x.is_floating_point() else x for x in example_inputs)
    wrapped = _Positional(module.float().eval(), len(example_inputs)).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapped, example_inputs, check_trace=False)
        mlmodel = ct.convert(
            traced,
            inputs=[ct.TensorType(name=n, shape=tuple(x.shape)) for n, x in zip(input_names, example_inputs)],
            outputs=[ct.TensorType(name=n) for n in output_names],
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT16 if precision == "float16" else ct.precision.FLOAT32,
            minimum_deployment_target=getattr(ct.target, target),
            skip_model_load=True,  # loading compiles for this machine: macOS only
        )
        if palettize_bits:
            from coremltools.optimize.coreml import OpPalettizerConfig, OptimizationConfig, palettize_weights

            cfg = OptimizationConfig(global_config=OpPalettizerConfig(mode="kmeans", nbits=palettize_bits))
            mlmodel = palettize_weights(mlmodel, cfg)
    if metadata:
        mlmodel.user_defined_metadata.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()})
    mlmodel.author = "snapgen-archsearch"
    return mlmodel


def unet_example_inputs(spec, latent_size: int, context_len: int) -> tuple[tuple, list[str]]:
    x = torch.randn(1, spec.latent_channels, latent_size, latent_size)
    t = torch.full((1,), 500.0)
    args, names = [x, t], ["sample", "timestep"]
    if spec.context_dim:
        args.append(torch.randn(1, context_len, spec.context_dim))
        names.append("encoder_hidden_states")
    if spec.pooled_dim:
        if not spec.context_dim:
            raise UserError("a pooled embedding without a context is not exportable", key="pooled_dim")
        args.append(torch.randn(1, spec.pooled_dim))
        names.append("pooled")
    return tuple(args), names


def export_unet(unet: nn.Module, path: str | Path, *, latent_size: int = 128, context_len: int = 77,
                attention: str = "split_einsum", precision: str = "float16", target: str = "iOS17",
                palettize_bits: int | None = None) -> Path:
    """Write ``path`` (a ``.mlpackage``) for ``SnapGenUNet`` at a fixed latent size, batch 1.

    Inputs ``sample`` (1, C, N, N), ``timestep`` (1,), ``encoder_hidden_states`` (1, context_len, D)
    [, ``pooled``]; output ``velocity`` (1, C, N, N).
    """
    from snapgen.export.ane import ane_layout, freeze_rope

    if attention not in ATTENTION_LAYOUTS:
        raise UserError(f"unknown attention layout {attention!r}; allowed: {', '.join(ATTENTION_LAYOUTS)}",
                        key="--attention")
    spec = unet.spec
    if latent_size % (2 ** (spec.num_stages - 1)):
        raise UserError(f"must be divisible by {2 ** (spec.num_stages - 1)}, got {latent_size}", key="--latent-size")
    inputs, names = unet_example_inputs(spec, latent_size, context_len)
    model = ane_layout(unet, inputs) if attention == "split_einsum" else freeze_rope(unet, inputs)
    ml = convert_module(model, inputs, names, ["velocity"], precision=precision, target=target,
                        palettize_bits=palettize_bits,
                        metadata={"snapgen.arch": spec.to_dict(), "snapgen.attention_layout": attention,
                                  "snapgen.latent_size": str(latent_size), "snapgen.context_len": str(context_len)})
    ml.short_description = f"SnapGen UNet {spec.name}: velocity for a {latent_size}x{latent_size} latent"
    return _save(ml, path)


def export_decoder(decoder: nn.Module, path: str | Path, *, latent_channels: int, latent_size: int = 128,
                   precision: str = "float16", target: str = "iOS17", palettize_bits: int | None = None,
                   name: str = "decoder", arch: dict | None = None) -> Path:
    """Write ``path`` for a decoder: input ``latent`` (1, C, N, N), output ``image``."""
    inputs = (torch.randn(1, latent_channels, latent_size, latent_size),)
    ml = convert_module(decoder, inputs, ["latent"], ["image"], precision=precision, target=target,
                        palettize_bits=palettize_bits,
                        metadata={"snapgen.decoder": arch or {"name": name}, "snapgen.latent_size": str(latent_size)})
    ml.short_description = f"SnapGen decoder {name}: image from a {latent_size}x{latent_size} latent"
    return _save(ml, path)


def _save(ml, path: str | Path) -> Path:
    path = Path(path)
    if path.suffix != ".mlpackage":
        raise UserError("a Core ML ML program is saved as a .mlpackage", file=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    ml.save(str(path))
    return path


def io_shapes(path: str | Path) -> dict[str, dict[str, list[int]]]:
    """Input and output shapes of a saved package, read without compiling it (works on Linux)."""
    ct = _ct()
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    get = lambda feats: {f.name: list(f.type.multiArrayType.shape) for f in feats}  # noqa: E731
    return {"inputs": get(spec.description.input), "outputs": get(spec.description.output)}
