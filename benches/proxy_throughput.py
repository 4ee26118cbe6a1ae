"""Training throughput of the proxy (its engine run, as ``snapgen.proxy.run_proxy`` builds it) vs a bare
PyTorch loop.

Both train the same proxy-sized model on the same latents with the same recipe — rectified flow
(per-sample velocity error), logit-normal t, CFG condition dropout, fused AdamW with linear
warm-up, gradient clipping 1.0, EMA — from the same seed on the same device and threads. The bare
loop is the textbook few lines with nothing around them (no hooks, checks, accumulation or
progress); it draws its batches exactly as the engine does, so on the CPU both end with the same
weights (checked and printed). Both live in one process and train in interleaved chunks of
``--steps`` steps (ours, bare, bare, ours, ...), so load on a shared machine hits both alike;
reported: the best chunk of each, the median of the per-round ratios, and (CPU) the same per
CPU-second of the thread, which other jobs disturb less; with the load average.

    python benches/proxy_throughput.py [--preset a] [--steps 40] [--rounds 4] [--device auto] [--data proxy]
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

import torch

import proxy_common
from snapgen.flow import EMA, drop_condition, flow_error, interpolate, logit_normal
from snapgen.proxy import ProxyConfig
from snapgen.train.device import synchronize
from snapgen.unet import SnapGenUNet


class BareLoop:
    """The textbook loop, one ``step()`` at a time (its state lives across chunks)."""

    def __init__(self, spec, assets, cfg: ProxyConfig, seed: int, dev):
        torch.manual_seed(seed)
        self.model = SnapGenUNet.from_spec(spec).to(dev)
        self.ema = EMA(self.model, cfg.ema_decay)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                     fused=dev.type != "mps")
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)))
        self.g = torch.Generator(device=dev).manual_seed(seed)
        self.lat, self.lab, self.ctx = assets.latents.to(dev), assets.labels.to(dev), assets.context.to(dev)
        self.null, self.cfg, self.dev = len(assets.class_names), cfg, dev

    def step(self):
        cfg, g, dev, b = self.cfg, self.g, self.dev, self.cfg.batch_size
        self.opt.zero_grad(set_to_none=True)  # first, as the engine does (the old grads are freed before the forward)
        idx = torch.randint(len(self.lat), (b,), generator=g, device=dev)
        x0 = self.lat[idx]
        y = drop_condition(self.lab[idx], cfg.p_uncond, self.null, generator=g)
        t = logit_normal(b, mean=cfg.logit_mean, std=cfg.logit_std, generator=g, device=dev)
        noise = torch.randn(x0.shape, generator=g, device=dev)
        loss = flow_error(self.model(interpolate(x0, noise, t), t * 1000, self.ctx[y], return_dict=False)[0], x0, noise).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip, foreach=True)
        self.opt.step()
        self.sched.step()
        self.ema.update(self.model)


def timed(fn, dev) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this thread) of ``fn()``, the device drained before and after."""
    synchronize(dev)
    t0, c0 = time.perf_counter(), time.thread_time()
    fn()
    synchronize(dev)
    return time.perf_counter() - t0, time.thread_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    proxy_common.add_arguments(ap)
    args = ap.parse_args()
    if args.precision != "fp32":
        raise SystemExit("the bare loop runs in fp32; compare at --precision fp32")
    cfg, assets, pspec, dev = proxy_common.setup(args)
    if pspec.pooled_dim:
        raise SystemExit("this bench's bare loop does not feed pooled embeddings; pick a preset without pooled_dim")
    k = args.steps
    cfg = replace(cfg, steps=k * (args.rounds + 1))
    engine = proxy_common.engine(cfg, assets, pspec, dev)
    bare = BareLoop(pspec, assets, cfg, 0, dev)

    def ours_chunk():  # the engine's own run loop, k more steps
        engine.recipe = replace(engine.recipe, steps=engine.step + k)
        engine.run()

    def bare_chunk():
        for _ in range(k):
            bare.step()

    ours_chunk(), bare_chunk()  # warm-up chunk (allocator, kernels), not timed
    res = {"ours": [], "bare": []}
    for r in range(args.rounds):
        # interleaved chunks, the order swapped every round (load drift hits both alike)
        for which in (("ours", "bare") if r % 2 == 0 else ("bare", "ours")):
            res[which].append(timed(ours_chunk if which == "ours" else bare_chunk, dev))
        o, b = (k * cfg.batch_size / res[w][-1][0] for w in ("ours", "bare"))
        print(f"round {r + 1}: ours {o:8.1f} img/s   bare {b:8.1f} img/s   ratio {o / b:.3f}", flush=True)
    params = sum(p.numel() for p in bare.model.parameters()) / 1e6
    print(f"preset {args.preset} at proxy size ({params:.2f}M params), batch {cfg.batch_size}, {args.rounds} rounds of "
          f"{k} steps, {args.threads} thread(s), {dev}, {args.data} data; load average "
          f"{'%.2f %.2f %.2f' % os.getloadavg()}")
    rate = {w: [k * cfg.batch_size / x[0] for x in res[w]] for w in res}
    if dev.type == "cpu":  # the same work: bit for bit the same weights after the same steps
        same = all(torch.equal(p, q) for p, q in zip(engine.ema.model.parameters(), bare.ema.model.parameters()))
        print(f"same weights as the engine after {engine.step} steps: {same}")
        cpu = {w: [k * cfg.batch_size / x[1] for x in res[w]] for w in res}
        print(f"per CPU-second of the thread: ours {max(cpu['ours']):.1f} img/s | bare {max(cpu['bare']):.1f} img/s | "
              f"median paired ratio {proxy_common.paired(cpu['ours'], cpu['bare']):.3f}")
    print(f"ours {max(rate['ours']):.1f} img/s | bare PyTorch {max(rate['bare']):.1f} img/s | best-of ratio "
          f"{max(rate['ours']) / max(rate['bare']):.3f} | median paired ratio {proxy_common.paired(rate['ours'], rate['bare']):.3f}")


if __name__ == "__main__":
    from snapgen.errors import user_errors

    with user_errors():  # a bad flag (an absent --device) is one line
        main()
