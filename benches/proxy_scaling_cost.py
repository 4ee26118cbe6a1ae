"""Cost per proxy step of the shipped proxy scaling (ArchSpec.scaled with ProxyConfig's defaults) vs the
previous one (depths x 0.25 rounded, head_dim 16: blind to four searched parameters; kept here only to
measure against).

Both proxy models of the same full-size preset (the shipped space's base by default) train the
proxy's objective on random tensors of the proxy's shapes (8x8x4 latents, 8 context tokens of 384
dims, batch 64) and sample (forward only, batch 250, as the evaluation does); rounds alternate
(previous, shipped, shipped, previous, ...) so that load on a shared machine hits both alike, and
the best round of each is reported with their ratio. No data, no assets: seconds.

    python benches/proxy_scaling_cost.py [--preset snapgen-t2i] [--steps 20] [--rounds 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from snapgen.presets import load_preset
from snapgen.proxy import ProxyConfig
from snapgen.unet import SnapGenUNet

from snapgen.proxy import proxy_spec


def previous_scaling(spec, *, latent_channels: int):
    """The proxy scaling before the shipped one: channels x 0.125 to multiples of lcm(16, 8) (round half
    to even), depths x 0.25 rounded, at least 1."""
    import math

    q = math.lcm(16, 8)
    stages = tuple(replace(s, channels=max(q, int(round(s.channels * 0.125 / q)) * q),
                           transformer_depth=s.transformer_depth and max(1, int(round(s.transformer_depth * 0.25))),
                           layers=max(1, int(round(s.layers * 0.25)))) for s in spec.stages)
    return replace(spec, stages=stages, head_dim=16, norm_groups=8, latent_channels=latent_channels, context_dim=384,
                   pooled_dim=384 if spec.pooled_dim else 0).validate()


def timed(spec, steps: int, batch: int, ctx_len: int, ctx_dim: int) -> tuple[float, float]:
    """(seconds per training step, seconds per sampling forward of 250 images)."""
    torch.manual_seed(0)
    model = SnapGenUNet.from_spec(spec)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, spec.latent_channels, 8, 8)
    ctx = torch.randn(batch, ctx_len, ctx_dim)
    t = torch.rand(batch) * 1000
    for _ in range(2):  # warm-up
        F.mse_loss(model(x, t, encoder_hidden_states=ctx, return_dict=False)[0], x).backward()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = F.mse_loss(model(x, t, encoder_hidden_states=ctx, return_dict=False)[0], x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    train = (time.perf_counter() - t0) / steps
    xs, cs, ts = torch.randn(250, spec.latent_channels, 8, 8), torch.randn(250, ctx_len, ctx_dim), torch.rand(250) * 1000
    with torch.no_grad():
        model(xs, ts, encoder_hidden_states=cs)
        t0 = time.perf_counter()
        for _ in range(3):
            model(xs, ts, encoder_hidden_states=cs)
    return train, (time.perf_counter() - t0) / 3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="snapgen-t2i")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    full = load_preset(None, args.preset)
    specs = {"previous": previous_scaling(full, latent_channels=4),
             "shipped": proxy_spec(full, ProxyConfig(), latent_channels=4, context_dim=384)}
    res: dict[str, list[tuple[float, float]]] = {k: [] for k in specs}
    for r in range(args.rounds):
        for which in (("previous", "shipped") if r % 2 == 0 else ("shipped", "previous")):
            res[which].append(timed(specs[which], args.steps, ProxyConfig().batch_size, 8, specs[which].context_dim))
        print(f"round {r + 1}: " + "  ".join(f"{k} {v[-1][0] * 1e3:.1f} ms/step {v[-1][1] * 1e3:.1f} ms/sample-fwd"
                                           for k, v in res.items()), flush=True)
    best = {k: (min(a for a, _ in v), min(b for _, b in v)) for k, v in res.items()}
    for k, s in specs.items():
        n = sum(p.numel() for p in SnapGenUNet.from_spec(s).parameters())
        print(f"{k:9s} {n / 1e6:.3f}M params  channels {[st.channels for st in s.stages]} layers "
              f"{[st.layers for st in s.stages]} depth {[st.transformer_depth for st in s.stages]} head_dim {s.head_dim}")
    print(f"preset {args.preset}, batch {ProxyConfig().batch_size}, {args.threads} thread(s), load {os.getloadavg()[0]:.2f}")
    print(f"shipped / previous: training step {best['shipped'][0] / best['previous'][0]:.2f}x, "
          f"sampling forward {best['shipped'][1] / best['previous'][1]:.2f}x")


if __name__ == "__main__":
    main()
