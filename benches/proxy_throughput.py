"""Training throughput of the proxy (its engine run, as ``snapgen.proxy.run_proxy`` builds it) vs a bare
PyTorch loop.

Both train the same proxy-sized model on the same latents with the same recipe — rectified flow
(per-sample velocity error), logit-normal t, CFG condition dropout, fused AdamW with linear
warm-up, gradient clipping 1.0, EMA — from the same seed on the same device and threads. The bare
loop is the textbook few lines with nothing around them (no hooks, checks, accumulation or
progress); it draws its batches exactly as the engine does, so on the CPU both end with the same
weights (checked and printed). Runs alternate (ours, bare, bare, ours, ...) so that load on a
shared machine hits both alike; the best round of each is reported, with the load average.

    python benches/proxy_throughput.py [--preset a] [--steps 40] [--rounds 4] [--device auto] [--data proxy]
"""
from __future__ import annotations

import argparse
import os
import time

import torch

import proxy_common
from snapgen.flow import EMA, drop_condition, flow_error, interpolate, logit_normal
from snapgen.proxy import ProxyConfig
from snapgen.train.device import synchronize
from snapgen.unet import SnapGenUNet


def bare_loop(spec, assets, cfg: ProxyConfig, steps: int, seed: int, dev) -> tuple[float, SnapGenUNet]:
    torch.manual_seed(seed)
    model = SnapGenUNet.from_spec(spec).to(dev)
    ema = EMA(model, cfg.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=dev.type != "mps")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)))
    g = torch.Generator(device=dev).manual_seed(seed)
    lat, lab, ctx = assets.latents.to(dev), assets.labels.to(dev), assets.context.to(dev)
    null, n, b = len(assets.class_names), len(lat), cfg.batch_size
    synchronize(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(n, (b,), generator=g, device=dev)
        x0 = lat[idx]
        y = drop_condition(lab[idx], cfg.p_uncond, null, generator=g)
        t = logit_normal(b, mean=cfg.logit_mean, std=cfg.logit_std, generator=g, device=dev)
        noise = torch.randn(x0.shape, generator=g, device=dev)
        loss = flow_error(model(interpolate(x0, noise, t), t * 1000, ctx[y]), x0, noise).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=True)
        opt.step()
        sched.step()
        ema.update(model)
    synchronize(dev)
    return steps * b / (time.perf_counter() - t0), ema.model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    proxy_common.add_arguments(ap)
    args = ap.parse_args()
    if args.precision != "fp32":
        raise SystemExit("the bare loop runs in fp32; compare at --precision fp32")
    cfg, assets, pspec, dev = proxy_common.setup(args)
    if pspec.pooled_dim:
        raise SystemExit("this bench's bare loop does not feed pooled embeddings; pick a preset without pooled_dim")
    ours, bare = [], []
    for r in range(args.rounds):
        # swap the order every round so that neither loop always runs first (warm-up, load drift)
        for which in (("ours", "bare") if r % 2 == 0 else ("bare", "ours")):
            if which == "ours":
                rate, engine = proxy_common.engine_rate(cfg, assets, pspec, dev)
                ours.append(rate)
            else:
                rate, model = bare_loop(pspec, assets, cfg, args.steps, 0, dev)
                bare.append(rate)
        print(f"round {r + 1}: ours {ours[-1]:8.1f} img/s   bare {bare[-1]:8.1f} img/s", flush=True)
    o, b = max(ours), max(bare)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"preset {args.preset} at proxy size ({params:.2f}M params), batch {cfg.batch_size}, {args.steps} steps, "
          f"{args.threads} thread(s), {dev}, {args.data} data; load average {'%.2f %.2f %.2f' % os.getloadavg()}")
    if dev.type == "cpu":  # the same work: bit for bit the same weights
        same = all(torch.equal(p, q) for p, q in zip(engine.ema.model.parameters(), model.parameters()))
        print(f"same final weights as the engine: {same}")
    print(f"ours {o:.1f} img/s | bare PyTorch {b:.1f} img/s | ratio {o / b:.3f}")


if __name__ == "__main__":
    from snapgen.errors import user_errors

    with user_errors():  # a bad flag (an absent --device) is one line
        main()
