"""``archsearch latency``: one architecture's measured latency on a backend, per stage."""
from __future__ import annotations

import json
import warnings

from snapgen.errors import UserError


def add_arguments(p):
    p.add_argument("spec", nargs="?", help="an architecture spec file (YAML/JSON), or a search space with --preset")
    p.add_argument("--preset", help="preset name (in --space; default: the shipped unet.yaml, then decoder.yaml)")
    p.add_argument("--space", help="search-space YAML holding --preset (a decoder space gives decoder presets)")
    add_backend_arguments(p)
    p.add_argument("--latent-size", type=int, default=128, help="latent height/width (default 128 = 1024 px)")
    p.add_argument("--context-len", type=int, default=77, help="context tokens for cross-attention (default 77)")
    p.add_argument("--max-time", type=float, default=60.0, help="stop repeating after this many seconds (default 60)")
    p.add_argument("--max-repeats", type=int, default=30, help="cap on timed repeats (default 30)")
    p.add_argument("--no-breakdown", action="store_true", help="skip the per-stage pass")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def add_backend_arguments(p):
    p.add_argument("--backend", default="torch", help="torch | coreml (default torch)")
    p.add_argument("--device", help="torch: cpu | cuda[:N] | mps (default cpu); coreml: all | cpu_only | "
                                    "cpu_and_gpu | cpu_and_ne (default all)")
    p.add_argument("--threads", type=int, help="intra-op threads, fixed and recorded (default: torch's, = cores)")
    p.add_argument("--compile", action="store_true", help="torch backend: time torch.compile'd modules")
    p.add_argument("--dtype", default="float32", help="torch backend: float32 | float16 | bfloat16")
    p.add_argument("--clock", default="wall", help="wall (default: latency) | cpu (process CPU time: robust on a "
                                                   "shared machine; = wall with --threads 1 on an idle core)")


def backend_from_args(args):
    from archsearch.latency.backends import get_backend

    return get_backend(args.backend, args.device, threads=args.threads, mode="compile" if args.compile else "eager",
                       dtype=args.dtype, clock=args.clock)


def resolve_spec(spec_path: str | None, preset: str | None, space: str | None):
    """A UNet or decoder spec from a spec file, or from a preset of a space (found in the shipped
    spaces when --space is not given)."""
    from snapgen.presets import DEFAULT_DECODER_SPACE, DEFAULT_UNET_SPACE, preset_names

    from archsearch.commands.cost import load_spec

    if preset:
        if space and spec_path:
            raise UserError("give either a SPEC file or --space with --preset, not both", key="--space")
        source = space or spec_path
        if source is None:
            for cand in (DEFAULT_UNET_SPACE, DEFAULT_DECODER_SPACE):
                if preset in preset_names(cand):
                    source = str(cand)
                    break
            else:
                allowed = preset_names(DEFAULT_UNET_SPACE) + preset_names(DEFAULT_DECODER_SPACE)
                raise UserError(f"unknown preset {preset!r}; allowed: {', '.join(allowed)}", key="--preset")
        return load_spec(str(source), preset)
    if not spec_path:
        raise UserError("name an architecture: a SPEC file or --preset NAME", key="SPEC")
    if space:
        raise UserError("--space needs --preset", key="--space")
    return load_spec(spec_path, None)


def policy_from_args(args):
    from archsearch.latency.timing import TimingPolicy

    if args.max_time <= 0 or args.max_repeats < 1:
        raise UserError("--max-time must be > 0 and --max-repeats >= 1", key="--max-time")
    return TimingPolicy(max_time_s=args.max_time, max_repeats=args.max_repeats,
                        min_repeats=min(3, args.max_repeats))


def run(args):
    from archsearch.latency.measure import measure_latency

    backend = backend_from_args(args)  # fails fast (unknown backend, absent device) before any build
    spec = resolve_spec(args.spec, args.preset, args.space)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = measure_latency(spec, backend, latent_size=args.latent_size, context_len=args.context_len,
                              policy=policy_from_args(args), breakdown=not args.no_breakdown)
    if args.json:
        print(json.dumps(res.to_dict()))
        return 0
    print(f"{res.kind} {res.name}: backend {res.backend} ({res.mode}), device {res.device}, {res.threads} threads, "
          f"{res.dtype}, {res.clock} clock, latent {res.latent_size}x{res.latent_size}, batch 1")
    if not res.timed:
        print(f"  latency: not timed — {res.note}")
        return 0
    flag = "" if res.stable else "  (median not yet stable at the cap: noisy machine?)"
    print(f"  median {res.median_ms:10.1f} ms   p10 {res.p10_ms:.1f}  p90 {res.p90_ms:.1f}  IQR {res.iqr_ms:.1f}  "
          f"over {res.repeats} runs{flag}")
    if "loadavg_1m" in res.machine:
        print(f"  load average (1 min) at start {res.machine['loadavg_1m']}, end {res.machine.get('loadavg_1m_end')} "
              f"on {res.machine['cpu_count']} CPUs")
    if res.per_stage_ms:
        total = sum(res.per_stage_ms.values())
        print(f"  {'stage':<16}{'ms':>10}{'share':>8}   (forward hooks, separate pass)")
        for k, v in res.per_stage_ms.items():
            print(f"  {k:<16}{v:10.1f}{v / total * 100:7.1f}%")
    return 0
