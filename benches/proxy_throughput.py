"""Training throughput of the proxy loop (``snapgen.proxy.run_proxy``) vs a bare PyTorch loop.

Both train the same proxy-sized model on the same cached latents with the same objective
(rectified flow, logit-normal t, CFG condition dropout, AdamW, EMA), same seed and thread count;
the bare loop is the textbook few lines with nothing around them (no progress bar, no checks, no
callbacks). Runs alternate (ours, bare, bare, ours, ...) so that load on a shared machine hits
both alike; the best round of each is reported. Needs warm caches (run ``snapgen proxy`` once).

    python benches/proxy_throughput.py [--preset a] [--steps 60] [--rounds 3]
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from snapgen.flow import EMA, drop_condition, interpolate, logit_normal, velocity_target
from snapgen.presets import load_preset
from snapgen.proxy import ProxyConfig, prepare_assets, proxy_spec, run_proxy
from snapgen.unet import SnapGenUNet


def bare_loop(spec, assets, cfg: ProxyConfig, steps: int, seed: int) -> float:
    torch.manual_seed(seed)
    model = SnapGenUNet.from_spec(spec)
    ema = EMA(model, cfg.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)))
    g = torch.Generator().manual_seed(seed)
    lat, lab, ctx = assets.latents, assets.labels, assets.context
    null, n, b = len(assets.class_names), len(lat), cfg.batch_size
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(n, (b,), generator=g)
        x0 = lat[idx]
        y = drop_condition(lab[idx], cfg.p_uncond, null, generator=g)
        t = logit_normal(b, generator=g)
        noise = torch.randn(x0.shape, generator=g)
        loss = F.mse_loss(model(interpolate(x0, noise, t), t * 1000, encoder_hidden_states=ctx[y], return_dict=False)[0],
                          velocity_target(x0, noise))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ema.update(model)
    return steps * b / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="a")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = load_preset(None, args.preset)
    cfg = replace(ProxyConfig(), steps=args.steps, num_samples=100, sample_steps=1, threads=args.threads,
                  progress=False)
    assets = prepare_assets(cfg)
    pspec = proxy_spec(spec, cfg, latent_channels=assets.latents.shape[1], context_dim=assets.context.shape[-1])
    if pspec.pooled_dim:
        raise SystemExit("this bench's bare loop does not feed pooled embeddings; pick a preset without pooled_dim")
    ours, bare = [], []
    for r in range(args.rounds):
        # swap the order every round so that neither loop always runs first (warm-up, load drift)
        for which in (("ours", "bare") if r % 2 == 0 else ("bare", "ours")):
            if which == "ours":
                ours.append(run_proxy(spec, cfg, seed=0).images_per_second)  # train-loop img/s (eval excluded)
            else:
                bare.append(bare_loop(pspec, assets, cfg, args.steps, seed=0))
        print(f"round {r + 1}: ours {ours[-1]:8.1f} img/s   bare {bare[-1]:8.1f} img/s", flush=True)
    o, b = max(ours), max(bare)
    print(f"preset {args.preset} at proxy size ({sum(p.numel() for p in SnapGenUNet.from_spec(pspec).parameters()) / 1e6:.2f}M "
          f"params), batch {cfg.batch_size}, {args.steps} steps, {args.threads} thread(s)")
    print(f"ours {o:.1f} img/s | bare PyTorch {b:.1f} img/s | ratio {o / b:.3f}")


if __name__ == "__main__":
    main()
