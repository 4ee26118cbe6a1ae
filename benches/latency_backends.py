"""Smoke-and-numbers run of the latency backends on whatever this machine has (cpu, cuda, mps).

    python benches/latency_backends.py --out DIR

Prints one JSON line per measurement (presets a and f, decoders tiny and sd3, at latent 128):
eager fp32, eager fp16 (accelerators), torch.compile. Not a test.
"""
from __future__ import annotations

import argparse
import json
import warnings

import torch

from archsearch.latency import TimingPolicy, measure_latency
from snapgen.presets import load_decoder_preset, load_preset


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--latent", type=int, default=128)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    pol = TimingPolicy(max_time_s=10.0, max_repeats=30)
    specs = [load_preset(None, "a"), load_preset(None, "f"), load_decoder_preset(None, "tiny"),
             load_decoder_preset(None, "sd3")]
    configs = [dict(mode="eager", dtype="float32")]
    if a.device != "cpu":
        configs += [dict(mode="eager", dtype="float16"), dict(mode="compile", dtype="float16")]
    for cfg in configs:
        for spec in specs:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = measure_latency(spec, "torch", a.device, a.latent, policy=pol, breakdown=cfg["mode"] == "eager",
                                    **cfg)
            d = {k: getattr(r, k) for k in ("name", "kind", "device", "mode", "dtype", "latent_size", "median_ms",
                                            "p10_ms", "p90_ms", "repeats", "stable", "per_stage_ms")}
            d["gpu"] = torch.cuda.get_device_name() if a.device.startswith("cuda") else None
            print(json.dumps(d), flush=True)
            if a.out:
                with open(f"{a.out}/backends.jsonl", "a") as f:
                    f.write(json.dumps(d) + "\n")


if __name__ == "__main__":
    main()
