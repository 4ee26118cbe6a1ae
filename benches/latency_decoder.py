"""The tiny decoder before and after running channels-last, measured side by side in one run, next
to the SD3 decoder; and the UNets fed a channels-last input (what running them channels-last
throughout would give). Not a test: prints a Markdown table.

    python benches/latency_decoder.py [--latent 32] [--threads N] [--clock wall] [--repeats 3]
                                      [--unets a,f] [--unet-latent 32] [--profile] [--out results.json]

"before" runs the code as it was: the NCHW TinyDecoder.forward, patched in for the measurement only;
"after" is the shipped code. For the UNets, "before" is the NCHW input, "after" a channels-last one.
Before/after/SD3 are interleaved round by round (median per model), so load changes hit them alike.
``--profile`` prints torch.profiler's per-operator table of the tiny decoder, before and after.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
import warnings
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

from archsearch.latency.models import build_module, example_inputs
from archsearch.latency.timing import torch_threads
from snapgen.blocks import CONV
from snapgen.decoder import TinyDecoder
from snapgen.presets import load_decoder_preset, load_preset


def _nchw_decoder_forward(self, z):
    h = self.conv_in(z)
    for stage in self.stages:
        h = stage(h)
    return self.conv_out(F.silu(self.norm_out(h)))


@contextlib.contextmanager
def before():
    """The NCHW code paths this change replaced."""
    with mock.patch.object(TinyDecoder, "forward", _nchw_decoder_forward):
        yield


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latent", type=int, default=32, help="decoder latent (default 32: 256 px)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="default: torch's (all cores)")
    ap.add_argument("--clock", default="wall")
    ap.add_argument("--repeats", type=int, default=3, help="rounds (default 3)")
    ap.add_argument("--unets", default="a,f", help="UNet presets to time before/after ('' for none)")
    ap.add_argument("--unet-latent", type=int, default=32)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    now = time.process_time if a.clock == "cpu" else time.perf_counter
    models = {}
    for name in ("tiny", "sd3"):
        spec = load_decoder_preset(None, name)
        models[name] = (spec, build_module(spec), example_inputs(spec, a.latent)[0])
    for name in [u for u in a.unets.split(",") if u]:
        spec = load_preset(None, name)
        models[f"unet-{name}"] = (spec, build_module(spec), example_inputs(spec, a.unet_latent)[0])
        st = spec.stages[0]
        if st.conv != "regular":  # one stage-0 conv of the UNet at the full 128x128 latent
            conv = CONV.build(st.conv, st.channels, st.channels, expansion=st.conv_expansion).eval()
            models[f"unet-{name} {st.conv} conv {st.channels}ch @128"] = (spec, conv, (torch.randn(1, st.channels, 128, 128),))
    cl = lambda x: x.contiguous(memory_format=torch.channels_last) if x is not None and x.dim() == 4 else x  # noqa: E731
    runs = [(n, b) for n in models for b in ((True, False) if n != "sd3" else (False,))]

    def call(name, old):
        _, m, x = models[name]
        if name.startswith("unet"):  # the model is unchanged: NCHW (before) vs channels-last input (after)
            with torch.inference_mode():
                return m(*(x if old else tuple(cl(t) for t in x)))
        with before() if old else contextlib.nullcontext(), torch.inference_mode():
            return m(*x)

    with torch_threads(a.threads):
        tiny_new, tiny_old = call("tiny", False), call("tiny", True)  # also the warm-up
        for n, b in runs:
            call(n, b)
        times: dict = {r: [] for r in runs}
        load0 = os.getloadavg()[0]
        for _ in range(a.repeats):
            for n, b in runs:
                t0 = now()
                call(n, b)
                times[(n, b)].append((now() - t0) * 1e3)
        if a.profile:
            from torch.profiler import ProfilerActivity, profile

            for old in (True, False):
                with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                    call("tiny", old)
                print(f"\ntiny decoder, {'before (NCHW)' if old else 'after (channels-last)'}")
                print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=12))
    ms = {r: float(np.median(v)) for r, v in times.items()}
    diff = float((tiny_new - tiny_old).abs().max())
    res = {"latent": a.latent, "unet_latent": a.unet_latent, "threads": a.threads, "clock": a.clock,
           "repeats": a.repeats, "loadavg_1m_start": round(load0, 2), "loadavg_1m_end": round(os.getloadavg()[0], 2),
           "ms": {f"{n}{' before' if b else ''}": v for (n, b), v in ms.items()}, "tiny_max_abs_diff": diff,
           "sd3_over_tiny_before": ms[("sd3", False)] / ms[("tiny", True)],
           "sd3_over_tiny_after": ms[("sd3", False)] / ms[("tiny", False)]}
    print(f"\n{a.threads} thread(s), {a.clock} clock, median of {a.repeats} interleaved rounds, load avg "
          f"{res['loadavg_1m_start']}-{res['loadavg_1m_end']}\n")
    print("UNets: before = NCHW input, after = channels-last input (the model is unchanged)\n")
    print("| model | latent | before ms | after ms | speed-up |\n|---|---|---|---|---|")
    for n in models:
        lat = a.latent if n in ("tiny", "sd3") else (128 if "@128" in n else a.unet_latent)
        if n == "sd3":
            print(f"| sd3 decoder | {lat} | {ms[(n, False)]:.0f} | (unchanged) | |")
        else:
            print(f"| {n} | {lat} | {ms[(n, True)]:.0f} | {ms[(n, False)]:.0f} | {ms[(n, True)] / ms[(n, False)]:.2f}x |")
    print(f"\nsd3 / tiny: {res['sd3_over_tiny_before']:.1f}x before, {res['sd3_over_tiny_after']:.1f}x after; "
          f"tiny outputs before vs after: max |diff| {diff:.2e}")
    if "unet-a" in models and "unet-f" in models:
        res["a_over_f_before"] = ms[("unet-a", True)] / ms[("unet-f", True)]
        res["a_over_f_after"] = ms[("unet-a", False)] / ms[("unet-f", False)]
        print(f"UNet a / f: {res['a_over_f_before']:.2f}x before, {res['a_over_f_after']:.2f}x after")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
