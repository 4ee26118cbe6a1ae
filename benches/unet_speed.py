"""Forward latency of our UNet blocks against diffusers', measured side by side in one run.

Prints  ours(a) / diffusers(a)  at 32x32 and 64x64 latents (target <= 1.0: our blocks are not
slower than diffusers'), and  a / f  (the paper's ladder implies well over 2x on its device).
Both models get the same weights-free config, the same inputs, the same thread count; runs
alternate (ABAB...) so drift in machine load hits both equally.

    python benches/unet_speed.py [--sizes 32 64] [--repeats 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from archsearch.cost import unet_inputs
from snapgen.presets import load_preset
from snapgen.unet import SnapGenUNet


def diffusers_equivalent(spec):
    from diffusers import UNet2DConditionModel

    st = spec.stages
    return UNet2DConditionModel(
        sample_size=32, in_channels=spec.latent_channels, out_channels=spec.latent_channels,
        down_block_types=tuple("CrossAttnDownBlock2D" if s.transformer_depth else "DownBlock2D" for s in st),
        up_block_types=tuple("CrossAttnUpBlock2D" if s.transformer_depth else "UpBlock2D" for s in reversed(st)),
        block_out_channels=tuple(s.channels for s in st), layers_per_block=st[0].layers,
        transformer_layers_per_block=tuple(s.transformer_depth for s in st),
        attention_head_dim=tuple(s.channels // spec.head_dim for s in st),
        cross_attention_dim=spec.context_dim, use_linear_projection=True)


def time_pair(models: dict, inputs: dict, repeats: int) -> dict[str, float]:
    """Median ms per model; one warm-up each, then alternating timed runs."""
    times = {k: [] for k in models}
    with torch.inference_mode():
        for k, m in models.items():
            m(*inputs[k])
        for _ in range(repeats):
            for k, m in models.items():
                t0 = time.perf_counter()
                m(*inputs[k])
                times[k].append(1e3 * (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    a = dataclasses.replace(load_preset(None, "a"), context_dim=2048)
    f = dataclasses.replace(load_preset(None, "f"), context_dim=2048)
    ours_a, ours_f = SnapGenUNet.from_spec(a).eval(), SnapGenUNet.from_spec(f).eval()
    ref_a = diffusers_equivalent(a).eval()
    print(f"threads={args.threads} repeats={args.repeats} batch=1 context=77x2048 (fp32, eager)")
    print(f"{'latent':>7} {'ours a ms':>10} {'diffusers a ms':>15} {'ours/diffusers':>15} {'ours f ms':>10} {'a/f':>6}")
    for size in args.sizes:
        x = unet_inputs(a, size)
        res = time_pair({"ours_a": lambda *i: ours_a(*i), "ref_a": lambda *i: ref_a(*i).sample,
                         "ours_f": lambda *i: ours_f(*i)},
                        {"ours_a": x, "ref_a": x, "ours_f": unet_inputs(f, size)}, args.repeats)
        print(f"{size:>7} {res['ours_a']:10.1f} {res['ref_a']:15.1f} {res['ours_a'] / res['ref_a']:15.3f}"
              f" {res['ours_f']:10.1f} {res['ours_a'] / res['ours_f']:6.2f}")


if __name__ == "__main__":
    main()
