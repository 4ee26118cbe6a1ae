"""Model FLOPs utilisation (MFU) of the proxy's training loop, as nanoGPT reports it.

    MFU = achieved training FLOP/s / the device's dense-matmul FLOP/s, both measured in this run

* achieved = fvcore forward FLOPs of one proxy-sized image x 3 (forward + backward, nanoGPT's
  ``6N`` per token = 3 x the forward's ``2N``) x the training loop's images/s (the proxy's engine
  run, evaluation excluded: ``ProxyResult.images_per_second``);
* peak = ``torch.mm`` of two ``n x n`` matrices on the same device and thread count, in the dtype
  the loop computes in (float32; bfloat16 under bf16 autocast, e.g. ``--precision auto`` on CUDA).

Units: fvcore counts one multiply-add as one FLOP (the project's convention, DESIGN §4), so the
matmul is counted the same way (``n^3`` multiply-adds per product). Printed with both conventions'
numbers so nothing is hidden: ``GMAC/s`` = fvcore units; ``x2`` gives FLOP/s as vendors quote them
(the ratio is the same). Training rounds and matmul probes alternate (probe, train, probe, ...), so
load on a shared machine hits both alike; the best of each is reported, with the load average,
and on the CPU also per CPU-second of the thread (less disturbed by other jobs).

    python benches/proxy_mfu.py [--preset a] [--steps 40] [--rounds 4] [--threads 1] [--device auto] [--data proxy]
"""
from __future__ import annotations

import argparse
import os
import time

import torch

import proxy_common


def matmul_macs_per_s(device: torch.device, n: int = 2048, seconds: float = 1.0,
                      dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """Dense matmul throughput in multiply-adds per second (n^3 per product): per wall second and per
    CPU second of this thread."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.mm(a, b, out=c)  # warm-up
    sync()
    reps, t0, c0 = 0, time.perf_counter(), time.thread_time()
    while True:
        torch.mm(a, b, out=c)
        reps += 1
        if reps % 4 == 0:
            sync()
            if time.perf_counter() - t0 >= seconds:
                break
    return reps * n ** 3 / (time.perf_counter() - t0), reps * n ** 3 / (time.thread_time() - c0)


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
    proxy_common.add_arguments(ap)
    ap.add_argument("--matmul-n", type=int, default=2048)
    args = ap.parse_args()

    from snapgen.unet import SnapGenUNet

    from snapgen.train.device import autocast_dtype

    cfg, assets, pspec, dev = proxy_common.setup(args)
    mm_dtype = autocast_dtype(cfg.precision, dev) or torch.float32  # the peak of the precision it trains in
    fwd = forward_macs(SnapGenUNet.from_spec(pspec), assets, pspec)
    peaks, rates, peaks_cpu, rates_cpu = [], [], [], []
    for r in range(args.rounds):
        wall, cpu = matmul_macs_per_s(dev, args.matmul_n, dtype=mm_dtype)
        peaks.append(wall), peaks_cpu.append(cpu)
        wall, cpu, _ = proxy_common.engine_rate(cfg, assets, pspec, dev)
        rates.append(wall), rates_cpu.append(cpu)
        print(f"round {r + 1}: matmul {peaks[-1] / 1e9:8.1f} GMAC/s   proxy {rates[-1]:8.1f} img/s", flush=True)
    wall, cpu = matmul_macs_per_s(dev, args.matmul_n, dtype=mm_dtype)
    peaks.append(wall), peaks_cpu.append(cpu)
    peak, rate = max(peaks), max(rates)
    achieved = fwd * 3 * rate
    la = "%.2f %.2f %.2f" % os.getloadavg()
    print(f"preset {args.preset} at proxy size on {dev}, {args.threads} thread(s), batch {cfg.batch_size}, "
          f"{args.steps} steps, precision {cfg.precision} (matmul {str(mm_dtype)[6:]}), {args.data} data; load average {la}")
    print(f"forward {fwd / 1e9:.4f} GMAC/image (fvcore) | {rate:.1f} img/s | achieved {achieved / 1e9:.1f} GMAC/s "
          f"({2 * achieved / 1e9:.1f} GFLOP/s) | matmul {peak / 1e9:.1f} GMAC/s ({2 * peak / 1e9:.1f} GFLOP/s)")
    if dev.type == "cpu":
        ach_cpu, peak_cpu = fwd * 3 * max(rates_cpu), max(peaks_cpu)
        print(f"per CPU-second of the thread: {max(rates_cpu):.1f} img/s, achieved {ach_cpu / 1e9:.1f} GMAC/s, matmul "
              f"{peak_cpu / 1e9:.1f} GMAC/s: MFU {ach_cpu / peak_cpu:.3f}")
    print(f"MFU {achieved / peak:.3f}")

if __name__ == "__main__":
    from snapgen.errors import user_errors

    with user_errors():  # a bad flag (an absent --device) is one line
        main()
