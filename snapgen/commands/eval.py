"""``snapgen eval RUN_DIR [--steps N --cfg S --num-samples K --seed K] [--json]``: the proxy quality
metric (fd-fmnist offline, Inception FID on real data) of a trained model."""
from __future__ import annotations

import json


def add_arguments(p):
    p.add_argument("run_dir", help="output_dir of `snapgen train` (base, kd or step_distill)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the run's)")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the run's)")
    p.add_argument("--sampler", choices=["euler", "heun"], default=None)
    p.add_argument("--num-samples", type=int, default=None)
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: the run's eval.seed)")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N, mps")
    p.add_argument("--json", action="store_true")


def run(args):
    import torch

    from snapgen.proxy import evaluate, prepare_assets
    from snapgen.train.device import describe, resolve_device
    from snapgen.train.inference import load_run_model, run_proxy_config
    from snapgen.train.models import sampleable

    net, cfg = load_run_model(args.run_dir)
    pc = run_proxy_config(cfg, steps=args.steps, cfg_scale=args.cfg, num_samples=args.num_samples,
                          sampler=args.sampler, device=args.device)
    torch.set_num_threads(max(1, pc.threads))
    device = resolve_device(pc.device)
    assets = prepare_assets(pc)
    run_seed = cfg.seed + 1 if cfg.eval.seed is None else cfg.eval.seed
    seed = run_seed if args.seed is None else args.seed
    value, _, _ = evaluate(sampleable(net.to(device)), assets, pc, seed=seed, device=device)
    res = {"run_dir": args.run_dir, "metric": pc.metric, "value": value, "sample_steps": pc.sample_steps,
           "cfg_scale": pc.cfg_scale, "sampler": pc.sampler, "num_samples": pc.num_samples, "seed": seed,
           "device": describe(device)}
    print(json.dumps(res) if args.json else
          f"{args.run_dir}: {pc.metric} = {value:.4f} ({pc.num_samples} samples, {pc.sample_steps} {pc.sampler} "
          f"steps, cfg {pc.cfg_scale})")
    return 0
