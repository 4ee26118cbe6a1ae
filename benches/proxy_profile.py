"""Where the proxy's training step spends its time: torch.profiler over engine steps of a preset at
proxy size (default data, warm caches), the top operators by self time with their shares, grouped
into forward / backward / optimiser / EMA / clip / data by the enclosing record_function range.

    python benches/proxy_profile.py [--preset a] [--steps 10] [--threads 1] [--top 15]
"""
from __future__ import annotations

import argparse
import os
from collections import defaultdict
from dataclasses import replace

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="a")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    from torch.profiler import ProfilerActivity, profile, record_function

    from snapgen.presets import load_preset
    from snapgen.proxy import ProxyConfig, flow_engine, prepare_assets, proxy_spec
    from snapgen.train.device import resolve_device
    from snapgen.train.models import Student
    from snapgen.train.objectives import FlowMatching
    from snapgen.unet import SnapGenUNet

    torch.set_num_threads(args.threads)
    cfg = replace(ProxyConfig(), steps=10_000, progress=False, threads=args.threads, device=args.device)
    dev = resolve_device(cfg.device)
    assets = prepare_assets(cfg)
    pspec = proxy_spec(load_preset(None, args.preset), cfg, latent_channels=assets.latents.shape[1],
                       context_dim=assets.context.shape[-1])
    torch.manual_seed(0)
    net = SnapGenUNet.from_spec(pspec).to(dev)

    class Ranged(FlowMatching):  # forward inside a named range; the rest is grouped below
        def __call__(self, net, batch, step):
            with record_function("## forward"):
                return super().__call__(net, batch, step)

    e = flow_engine(Student(net), assets, cfg, seed=0, device=dev, objective=Ranged(), ema_of=net)

    class RangedBatches:
        def __init__(self, inner):
            self.inner = inner

        def __next__(self):
            with record_function("## data"):
                return next(self.inner)

    e.batches = RangedBatches(e.batches)
    for _ in range(3):
        e.train_step()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(args.steps):
            e.opt.zero_grad(set_to_none=True)
            e._micro(True)  # batch, forward, backward
            with record_function("## clip"):
                torch.nn.utils.clip_grad_norm_(e.params, e.recipe.grad_clip, foreach=True)
            with record_function("## optimiser"):
                e.opt.step()
                e.sched.step()
            with record_function("## ema"):
                e.ema.update()
        if dev.type == "cuda":
            torch.cuda.synchronize()
    events = prof.key_averages()
    total = sum(ev.self_cpu_time_total for ev in events if not ev.key.startswith("## "))
    print(f"preset {args.preset} at proxy size, batch {cfg.batch_size}, {args.threads} thread(s), {args.steps} steps on "
          f"{dev}; load average {'%.2f %.2f %.2f' % os.getloadavg()}")
    print(f"self CPU time per step: {total / args.steps / 1e3:.1f} ms")
    phases = {ev.key: ev.cpu_time_total for ev in events if ev.key.startswith("## ")}
    step_total = sum(phases.values())
    print("phases (inclusive CPU time; backward = the rest of the step):")
    for k, v in sorted(phases.items(), key=lambda kv: -kv[1]):
        print(f"  {k[3:]:10s} {v / args.steps / 1e3:8.2f} ms  {100 * v / total:5.1f}%")
    print(f"  {'backward+':10s} {(total - step_total) / args.steps / 1e3:8.2f} ms  {100 * (total - step_total) / total:5.1f}%")
    print(f"top {args.top} operators by self CPU time:")
    rows = sorted((ev for ev in events if not ev.key.startswith("## ")), key=lambda ev: -ev.self_cpu_time_total)
    for ev in rows[:args.top]:
        print(f"  {ev.key:45s} {ev.self_cpu_time_total / args.steps / 1e3:8.2f} ms  "
              f"{100 * ev.self_cpu_time_total / total:5.1f}%  calls/step {ev.count // args.steps}")
    groups = defaultdict(float)
    for ev in events:
        if not ev.key.startswith("## "):
            groups["convolution" if "conv" in ev.key else "matmul" if any(s in ev.key for s in ("mm", "addmm", "linear", "bmm"))
                   else "norm" if "norm" in ev.key else "other"] += ev.self_cpu_time_total
    print("by kind: " + ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in sorted(groups.items(), key=lambda kv: -kv[1])))


if __name__ == "__main__":
    main()
