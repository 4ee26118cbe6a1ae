"""The numbers docs/proxy.md shows, at the default proxy configuration (what a study uses).

Builds (or loads) the default assets in the user cache (``$SNAPGEN_CACHE`` or ``~/.cache/snapgen``)
and times that build, then scores preset ``a`` untrained and after 40 / 120 / 360 steps (one
360-step run evaluated at 40 and 120: intermediate evaluations are true budgets), writes the sample
grids and prints a Markdown table. Not a test: on the 2-core CPU it takes ~10-20 minutes cold.

    python scripts/proxy_budgets.py [--preset a] [--seed 0] [--img-dir docs/img] [--time-default]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="a")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budgets", default="40,120,360")
    ap.add_argument("--img-dir", default="docs/img")
    ap.add_argument("--time-default", action="store_true", help="also time one default evaluation (warm caches)")
    args = ap.parse_args()

    from snapgen.presets import load_preset
    from snapgen.proxy import ProxyConfig, prepare_assets, run_proxy
    from snapgen.sampling import save_grid

    load = lambda: "load average %.1f %.1f %.1f" % os.getloadavg()
    budgets = [int(b) for b in args.budgets.split(",")]
    spec = load_preset(None, args.preset)
    cfg = replace(ProxyConfig(), progress=False)
    print(f"# {load()}, {os.cpu_count()} CPUs, torch {torch.__version__}", flush=True)
    t0 = time.perf_counter()
    assets = prepare_assets(cfg)
    build = time.perf_counter() - t0
    print(f"assets: {build:.1f} s ({load()}) {json.dumps(assets.info)}", flush=True)

    untrained = run_proxy(spec, replace(cfg, steps=0), seed=args.seed)
    run = run_proxy(spec, replace(cfg, steps=budgets[-1], eval_at=tuple(budgets[:-1])), seed=args.seed)
    rows = [("untrained (0 steps)", untrained.value, untrained.samples, untrained.sample_labels, "untrained")]
    for step, value in run.evaluations:
        rows.append((f"{step} steps", value, run.samples_by_step[step], run.sample_labels, f"{step}-steps"))
    os.makedirs(args.img_dir, exist_ok=True)
    print(f"\npreset {args.preset} at proxy size: {run.params / 1e6:.2f}M params; {budgets[-1]}-step run "
          f"{run.train_seconds:.0f} s training at {run.images_per_second:.1f} img/s ({load()})\n")
    print(f"| | value (`{run.metric}`, lower is better) |\n|---|---|")
    for label, value, images, labels, name in rows:
        print(f"| {label} | {value:.2f} |")
        save_grid(images, labels, assets.class_names, os.path.join(args.img_dir, f"proxy-{name}.png"),
                  title=f"{spec.name}: {label}, {run.metric} {value:.2f}")
    if args.time_default:
        t0 = time.perf_counter()
        r = run_proxy(spec, cfg, seed=args.seed)
        print(f"\ndefault evaluation (warm): {time.perf_counter() - t0:.1f} s ({r.train_seconds:.0f} s training at "
              f"{r.images_per_second:.1f} img/s, {r.eval_seconds:.0f} s sampling + metric; {load()}) value {r.value:.4f}")


if __name__ == "__main__":
    main()
