"""``snapgen proxy``: train a preset small and short on the proxy task and print its quality metric."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", required=True, help="preset name in the search space (e.g. a, f, snapgen-imagenet)")
    p.add_argument("--space", default=None, help="search-space YAML holding the presets (default: search_spaces/unet.yaml)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the study default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object (metric, value, steps, seconds, ...)")
    p.add_argument("--data", default=None, help="Fashion-MNIST IDX directory (default: cache, Debian package, download)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1; 0 leaves torch's default)")
    p.add_argument("--device", default=None, help="auto (default: CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    p.add_argument("--precision", default=None, help="auto (default: bf16 autocast on CUDA, fp32 elsewhere), fp32, "
                   "bf16, fp16")
    p.add_argument("--compile", action="store_true", help="torch.compile the model's training forward")
    p.add_argument("--grid", default=None, metavar="PNG", help="also write a class-labelled sample grid")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def run(args) -> int:
    from snapgen.errors import UserError
    from snapgen.presets import load_preset
    from snapgen.proxy import ProxyConfig, run_proxy

    cfg = ProxyConfig()
    over = {k: v for k, v in (("device", args.device), ("precision", args.precision)) if v is not None}
    if args.compile:
        over["compile"] = True
    try:  # a device that is absent here is one line, before anything is loaded or written
        replace(cfg, **over).validate()
    except UserError as e:
        raise UserError(e.message, key=f"--{e.key}") from None
    spec = load_preset(args.space, args.preset)
    if args.steps is not None:
        over["steps"] = args.steps
    if args.data is not None:
        over["data_path"] = args.data
    if args.threads is not None:
        over["threads"] = args.threads
    if args.no_progress:
        over["progress"] = False
    cfg = replace(cfg, **over)
    result = run_proxy(spec, cfg, seed=args.seed)
    if args.grid:
        from snapgen.sampling import save_grid

        save_grid(result.samples, result.sample_labels, _class_names(cfg), args.grid,
                  title=f"{spec.name}: {result.steps} steps, {result.metric} {result.value:.3f}")
    if args.json:
        out = result.to_dict()
        print(json.dumps(out))
    else:
        a = result.assets
        print(f"{spec.name}: {result.metric} = {result.value:.4f} after {result.steps} steps "
              f"({result.seconds:.1f} s; {result.images_per_second:.0f} img/s on {result.device} {result.precision}; "
              f"proxy params {result.params / 1e6:.2f}M)")
        for step, v in result.evaluations[:-1]:
            print(f"  step {step}: {v:.4f}")
        if a.get("autoencoder_psnr_db") is not None:
            print(f"  autoencoder PSNR {a['autoencoder_psnr_db']:.2f} dB, latents {a['latent_shape']}", file=sys.stderr)
    return 0


def _class_names(cfg):
    from snapgen.proxy import prepare_assets

    return prepare_assets(cfg).class_names
