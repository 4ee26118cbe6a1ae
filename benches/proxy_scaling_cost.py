"""Cost per proxy step of the shipped proxy scaling vs the proposed one (archsearch/proxy_scaling.py).

Both proxy models of the same full-size preset (the shipped space's base by default) train the
proxy's objective on random tensors of the proxy's shapes (8x8x4 latents, 8 context tokens of 384
dims, batch 64) and sample (forward only, batch 250, as the evaluation does); rounds alternate
(current, proposed, proposed, current, ...) so that load on a shared machine hits both alike, and
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

from archsearch.proxy_scaling import PROPOSED_PROXY, SCALINGS


def timed(spec, steps: int, batch: int, ctx_len: int, ctx_dim: int) -> tuple[float, float]:
    """(seconds per training step, seconds per sampling forward of 250 images)."""
    torch.manual_seed(0)
    model = SnapGenUNet.from_spec(spec)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, spec.latent_channels, 8, 8)
    ctx = torch.randn(batch, ctx_len, ctx_dim)
    t = torch.rand(batch) * 1000
    for _ in range(2):  # warm-up
        F.mse_loss(model(x, t, encoder_hidden_states=ctx), x).backward()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = F.mse_loss(model(x, t, encoder_hidden_states=ctx), x)
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
    shipped = ProxyConfig()
    proposed = replace(shipped, **PROPOSED_PROXY)
    specs = {"current": SCALINGS["current"](full, shipped, latent_channels=4),
             "proposed": SCALINGS["distinct"](full, proposed, latent_channels=4)}
    res: dict[str, list[tuple[float, float]]] = {k: [] for k in specs}
    for r in range(args.rounds):
        for which in (("current", "proposed") if r % 2 == 0 else ("proposed", "current")):
            res[which].append(timed(specs[which], args.steps, shipped.batch_size, 8, specs[which].context_dim))
        print(f"round {r + 1}: " + "  ".join(f"{k} {v[-1][0] * 1e3:.1f} ms/step {v[-1][1] * 1e3:.1f} ms/sample-fwd"
                                           for k, v in res.items()), flush=True)
    best = {k: (min(a for a, _ in v), min(b for _, b in v)) for k, v in res.items()}
    for k, s in specs.items():
        n = sum(p.numel() for p in SnapGenUNet.from_spec(s).parameters())
        print(f"{k:9s} {n / 1e6:.3f}M params  channels {[st.channels for st in s.stages]} layers "
              f"{[st.layers for st in s.stages]} depth {[st.transformer_depth for st in s.stages]} head_dim {s.head_dim}")
    print(f"preset {args.preset}, batch {shipped.batch_size}, {args.threads} thread(s), load {os.getloadavg()[0]:.2f}")
    print(f"proposed / current: training step {best['proposed'][0] / best['current'][0]:.2f}x, "
          f"sampling forward {best['proposed'][1] / best['current'][1]:.2f}x")


if __name__ == "__main__":
    main()
