"""Model FLOPs utilisation (MFU) of the proxy's training loop, as nanoGPT reports it.

    MFU = achieved training FLOP/s / the device's dense-matmul FLOP/s, both measured in this run

* achieved = fvcore forward FLOPs of one proxy-sized image x 3 (forward + backward, nanoGPT's
  ``6N`` per token = 3 x the forward's ``2N``) x the training loop's images/s
  (``ProxyResult.images_per_second``: the loop alone, evaluation excluded);
* peak = ``torch.mm`` of two ``n x n`` float32 matrices on the same device and thread count.

Units: fvcore counts one multiply-add as one FLOP (the project's convention, DESIGN §4), so the
matmul is counted the same way (``n^3`` multiply-adds per product). Printed with both conventions'
numbers so nothing is hidden: ``GMAC/s`` = fvcore units; ``x2`` gives FLOP/s as vendors quote them
(the ratio is the same). Training rounds and matmul probes alternate (probe, train, probe, ...), so
load on a shared machine hits both alike; the best of each is reported, with the load average.

    python benches/proxy_mfu.py [--preset a] [--steps 40] [--rounds 2] [--threads 1] [--device auto]
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

import torch


def matmul_macs_per_s(device: torch.device, n: int = 2048, seconds: float = 1.0) -> float:
    """Dense fp32 matmul throughput in multiply-adds per second (n^3 per product)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    c = torch.empty(n, n, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.mm(a, b, out=c)  # warm-up
    sync()
    reps, t0 = 0, time.perf_counter()
    while True:
        torch.mm(a, b, out=c)
        reps += 1
        if reps % 4 == 0:
            sync()
            if time.perf_counter() - t0 >= seconds:
                break
    return reps * n ** 3 / (time.perf_counter() - t0)


def forward_macs(model, assets, pspec) -> float:
    """fvcore multiply-adds of one forward of one image (attention matmuls counted)."""
    from archsearch.cost import count_flops

    c, h, w = assets.latents.shape[1:]
    inputs = (torch.zeros(1, c, h, w), torch.full((1,), 500.0), assets.context[:1])
    if pspec.pooled_dim:
        inputs = inputs + (assets.pooled[:1],)
    return float(count_flops(model, inputs).total)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="a")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--matmul-n", type=int, default=2048)
    args = ap.parse_args()

    from snapgen.presets import load_preset
    from snapgen.proxy import ProxyConfig, prepare_assets, proxy_spec, run_proxy
    from snapgen.unet import SnapGenUNet

    torch.set_num_threads(args.threads)
    spec = load_preset(None, args.preset)
    base = ProxyConfig()
    over = dict(steps=args.steps, num_samples=100, sample_steps=1, threads=args.threads, progress=False)
    if "device" in ProxyConfig.__dataclass_fields__:
        over["device"] = args.device
    cfg = replace(base, **over)
    assets = prepare_assets(cfg)
    pspec = proxy_spec(spec, cfg, latent_channels=assets.latents.shape[1], context_dim=assets.context.shape[-1])
    fwd = forward_macs(SnapGenUNet.from_spec(pspec), assets, pspec)
    dev = torch.device("cpu")
    if "device" in ProxyConfig.__dataclass_fields__:
        from snapgen.train.device import resolve_device

        dev = resolve_device(args.device)
    peaks, rates = [], []
    for r in range(args.rounds):
        peaks.append(matmul_macs_per_s(dev, args.matmul_n))
        rates.append(run_proxy(spec, cfg, seed=0).images_per_second)
        print(f"round {r + 1}: matmul {peaks[-1] / 1e9:7.1f} GMAC/s   proxy {rates[-1]:7.1f} img/s", flush=True)
    peaks.append(matmul_macs_per_s(dev, args.matmul_n))
    peak, rate = max(peaks), max(rates)
    achieved = fwd * 3 * rate
    la = "%.2f %.2f %.2f" % os.getloadavg()
    print(f"preset {args.preset} at proxy size on {dev}, {args.threads} thread(s), batch {cfg.batch_size}, "
          f"{args.steps} steps; load average {la}")
    print(f"forward {fwd / 1e9:.4f} GMAC/image (fvcore) | {rate:.1f} img/s | achieved {achieved / 1e9:.1f} GMAC/s "
          f"({2 * achieved / 1e9:.1f} GFLOP/s) | matmul {peak / 1e9:.1f} GMAC/s ({2 * peak / 1e9:.1f} GFLOP/s)")
    print(f"MFU {achieved / peak:.3f}")


if __name__ == "__main__":
    main()
