"""``snapgen train CONFIG [OVERRIDE ...] [-m]``: train a stage (base | kd | step_distill | decoder) from a
config written by ``archsearch promote`` (or by hand); overrides use Hydra's grammar, and ``-m`` sweeps
(``snapgen train -m CONFIG seed=0,1 stage=base,kd``: one run per combination, each in
``output_dir/seed=0,stage=base`` ...). Re-running the same command resumes from each run's last
checkpoint. Multi-process: ``torchrun --nproc_per_node N -m snapgen.cli train CONFIG ...``."""
from __future__ import annotations

import dataclasses
import json


def add_arguments(p):
    from snapgen.clikit import add_overrides

    p.add_argument("config", help="training config YAML (see configs/)")
    add_overrides(p, "stage=kd train.steps=200 output_dir=runs/x")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object (one per run)")


def run(args):
    from snapgen.clikit import blame_overrides, jobs
    from snapgen.config import job_dir
    from snapgen.train.config import load_config
    from snapgen.train.stages import train

    todo = jobs(args)
    with blame_overrides(args.config, args.overrides):
        cfgs = [load_config(args.config, job) for job in todo]  # every job is checked before any runs
    if args.multirun:
        cfgs = [dataclasses.replace(c, output_dir=str(job_dir(c.output_dir, job, args.overrides)))
                for c, job in zip(cfgs, todo)]
    for cfg in cfgs:
        _report(cfg, train(cfg), args.json)
    return 0


def _report(cfg, result, as_json):
    if as_json:
        print(json.dumps(result))
    elif "value" in result:
        extra = f", PSNR {result['psnr_db']:.2f} dB" if "psnr_db" in result else ""
        print(f"{cfg.stage}: {result['metric']} = {result['value']:.4f} after {result['steps']} steps "
              f"({result['sample_steps']} sampling steps){extra}; {cfg.output_dir}")
    elif "psnr_db" in result:
        print(f"decoder: PSNR {result['psnr_db']:.2f} dB, {result['gflops']:.4f} GFLOPs; {cfg.output_dir}")
    else:
        print(f"{cfg.stage}: {result.get('steps', '?')} steps; {cfg.output_dir}")
