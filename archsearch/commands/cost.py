"""``archsearch cost``: params and GFLOPs of a preset or a spec file, with a per-stage breakdown."""
from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

from snapgen.errors import UserError


def add_arguments(p):
    p.add_argument("source", help="a search-space YAML (with --preset) or an architecture spec file (YAML/JSON)")
    p.add_argument("--preset", help="preset name in the space file")
    p.add_argument("--latent-size", type=int, default=128, help="latent height/width (default 128 = 1024 px)")
    p.add_argument("--context-dim", type=int, help="override the cross-attention context width (UNet)")
    p.add_argument("--context-len", type=int, default=77, help="context tokens for cross-attention (default 77)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def load_spec(source: str, preset: str | None, context_dim: int | None = None):
    """A UNet ArchSpec or a decoder spec from a space file + preset, or from a spec file."""
    from snapgen.decoder import DecoderSpec
    from snapgen.spec import ArchSpec, load_yaml

    from archsearch.space import SearchSpace

    path = Path(source)
    data = load_yaml(path)
    if isinstance(data, dict) and "presets" in data:
        if not preset:
            raise UserError("this is a search space: name one of its presets with --preset "
                            f"({', '.join(data['presets'] or {})})", file=source, key="--preset")
        from snapgen.presets import load_decoder_preset, load_preset

        # The requested preset first (its own errors name it), then the whole space.
        spec = (load_decoder_preset if data.get("kind") == "decoder" else load_preset)(path, preset)
        SearchSpace.load(path)
    else:
        if preset:
            raise UserError("--preset needs a search-space file; this looks like a spec file", file=source,
                            key="--preset")
        if isinstance(data, dict) and "arch" in data and "stages" not in data:
            data = data["arch"]
        if isinstance(data, dict) and "blocks" in data:
            spec = DecoderSpec.from_dict(data, file=source)
        else:
            spec = ArchSpec.from_dict(data, file=source)
    if context_dim is not None:
        if not isinstance(spec, ArchSpec):
            raise UserError("--context-dim applies to UNet specs only", key="--context-dim")
        spec = dataclasses.replace(spec, context_dim=context_dim).validate()
    return spec


def run(args):
    from archsearch.cost import cost_of

    if args.latent_size <= 0:
        raise UserError(f"must be a positive integer, got {args.latent_size}", key="--latent-size")
    spec = load_spec(args.source, args.preset, args.context_dim)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = cost_of(spec, args.latent_size, args.context_len)
    if args.json:
        print(json.dumps(rep.to_dict()))
        return 0
    px = args.latent_size * getattr(spec, "upscale", 8) if rep.kind == "decoder" else args.latent_size * 8
    print(f"{rep.kind} {rep.name}  ({args.source}), latent {args.latent_size}x{args.latent_size} (~{px} px), batch 1")
    print(f"  params              {rep.params / 1e6:10.3f} M")
    print(f"  GFLOPs              {rep.gflops:10.2f}   (1 multiply-add = 1 FLOP, fvcore)")
    print(f"    attention matmuls {rep.gflops_attention:10.2f}")
    print(f"    without attention {rep.gflops_no_attention:10.2f}")
    print(f"  {'part':<18}{'params (M)':>12}{'GFLOPs':>12}")
    for k, v in rep.per_stage.items():
        print(f"  {k:<18}{v['params'] / 1e6:12.3f}{v['gflops']:12.2f}")
    return 0
