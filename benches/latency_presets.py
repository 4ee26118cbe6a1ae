"""Measured latency of the UNet ladder a..f and the three decoders on this machine, with the
paper's ratios next to ours (docs/latency.md). Not a test: prints a Markdown table.

    python benches/latency_presets.py [--threads 1] [--clock cpu] [--unet-latent 128]
                                      [--decoder-latents 64 128] [--big-decoder-latent 64] [--out results.json]

sd3 / sdxl decode a 128x128 latent with ~5 TMAC (minutes per run on a laptop CPU): they are timed
at ``--big-decoder-latent`` (default 64, i.e. 512 px) and compared with tiny at the same latent.
"""
from __future__ import annotations

import argparse
import json
import warnings

from archsearch.latency import TimingPolicy, measure_latency
from snapgen.presets import load_decoder_preset, load_preset

PAPER = {"f/a (paper: step (c) alone 2.4x faster)": 2.4, "sd3/tiny decoder (paper: 54x on iPhone)": 54.0}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", default="cpu")
    ap.add_argument("--unet-latent", type=int, default=128)
    ap.add_argument("--decoder-latents", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--big-decoder-latent", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1, help="timed runs after one warm-up (default 1)")
    ap.add_argument("--unets", default="abcdef", help="UNet presets, e.g. abcdef ('' for none)")
    ap.add_argument("--decoders", default="tiny,sd3,sdxl", help="decoder presets ('' for none)")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    pol = TimingPolicy(warmup=1, min_repeats=a.repeats, max_repeats=a.repeats, min_time_s=0.0, max_time_s=1e9)
    rows = []

    def run(spec, kind, latent):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = measure_latency(spec, "torch", "cpu", latent, threads=a.threads, clock=a.clock, policy=pol,
                                breakdown=False)
        row = {"name": spec.name, "kind": kind, "latent": latent, "median_ms": r.median_ms, "repeats": r.repeats,
               "loadavg_1m": r.machine.get("loadavg_1m")}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps(row) + "\n")

    for n in a.unets:
        run(load_preset(None, n), "unet", a.unet_latent)
    decs = [d for d in a.decoders.split(",") if d]
    if "tiny" in decs:
        for lat in a.decoder_latents:
            run(load_decoder_preset(None, "tiny"), "decoder", lat)
    for n in [d for d in decs if d != "tiny"]:
        run(load_decoder_preset(None, n), "decoder", a.big_decoder_latent)
    by = {(r["name"], r["latent"]): r["median_ms"] for r in rows}
    print(f"\n| model | latent | median ms ({a.threads} thread(s), {a.clock} clock) |\n|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} {r['name']} | {r['latent']} | {r['median_ms']:.0f} |")
    if ("a", a.unet_latent) in by and ("f", a.unet_latent) in by:
        print(f"\nf/a speed-up: {by[('a', a.unet_latent)] / by[('f', a.unet_latent)]:.2f}x (paper, step (c) alone: 2.4x)")
    L = a.big_decoder_latent
    if ("tiny", L) in by and ("sd3", L) in by:
        print(f"sd3/tiny at latent {L}: {by[('sd3', L)] / by[('tiny', L)]:.1f}x (paper, iPhone 16 Pro Max: 54x)")


if __name__ == "__main__":
    main()
