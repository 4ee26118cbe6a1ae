"""``snapgen train CONFIG [key=value ...]``: train a stage (base | kd | step_distill | decoder) from a
config written by ``archsearch promote`` (or by hand); overrides use the OmegaConf dotlist grammar.
Re-running the same command resumes from the run's last checkpoint. Multi-process: ``torchrun
--nproc_per_node N -m snapgen.cli train CONFIG ...``."""
from __future__ import annotations

import json


def add_arguments(p):
    p.add_argument("config", help="training config YAML (see configs/)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. stage=kd train.steps=200 output_dir=runs/x")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def run(args):
    from snapgen.train.config import load_config
    from snapgen.train.stages import train

    cfg = load_config(args.config, args.overrides)
    result = train(cfg)
    if "value" in result or args.json:
        if args.json:
            print(json.dumps(result))
        elif "value" in result:
            extra = f", PSNR {result['psnr_db']:.2f} dB" if "psnr_db" in result else ""
            print(f"{cfg.stage}: {result['metric']} = {result['value']:.4f} after {result['steps']} steps "
                  f"({result['sample_steps']} sampling steps){extra}; {cfg.output_dir}")
    elif "psnr_db" in result:
        print(f"decoder: PSNR {result['psnr_db']:.2f} dB, {result['gflops']:.4f} GFLOPs; {cfg.output_dir}")
    return 0
