"""Lookup-table accuracy at every setting: for each latent x thread count x clock, calibrate a
table with the defaults (`archsearch calibrate SPACE --latent-size L`, no tuning flags) and
validate it on ``--n`` held-out architectures; prints a Markdown table and writes one JSON per
setting. Not a test.

    python benches/latency_accuracy.py --out DIR [--space search_spaces/unet.yaml]
        [--latents 32 64 128] [--threads 1 all] [--clocks wall cpu] [--n 20] [--estimate-only]

Resumable and incremental: a setting whose ``DIR/<setting>.json`` exists is skipped (delete it to
redo it); an interrupted calibration or validation resumes from its files in DIR. Before measuring
it prints an estimate of the run time (from one forward pass of the space's base preset per latent;
settings already done count zero). Run it on a quiet machine: wall-clock numbers measure the
scheduler otherwise (the load average is recorded with each setting).
"""
from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

from archsearch.latency import TimingPolicy, get_backend, measure_latency
from archsearch.latency.backends import default_threads
from archsearch.latency.table import VALIDATE_POLICY, calibrate, validate
from archsearch.latency.units import enumerate_units
from archsearch.space import SearchSpace


def setting_name(latent: int, threads: int, clock: str, device: str = "cpu", dtype: str = "float32",
                 compile: bool = False) -> str:
    extra = "" if (device, dtype, compile) == ("cpu", "float32", False) else \
        f"-{device.replace(':', '')}-{dtype}{'-compile' if compile else ''}"
    return f"L{latent}-t{threads}-{clock}{extra}"


def estimate_s(space, latent: int, n: int, anchors: int, cache: dict, device: str = "cpu",
               dtype: str = "float32") -> float:
    """Rough calibration + validation seconds from one forward pass of the base preset: each unit
    is timed for max(0.1 s, ~3 calls) of the base's mean unit cost, x2 for the space's heavier
    options; then (anchors + n) x 3 forward passes."""
    from archsearch.latency.units import units_of

    if latent not in cache:
        base = space.preset(space.base)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cpu = device == "cpu"
            r = measure_latency(base, "torch", device, latent, threads=1 if cpu else None,
                                clock="cpu" if cpu else "wall", dtype=dtype,
                                policy=TimingPolicy(warmup=1, min_repeats=1, max_repeats=1, min_time_s=0.0),
                                breakdown=False)
        cache[latent] = (r.median_ms / 1e3, len(enumerate_units(space, latent)), len(units_of(base, latent)))
    fwd, units, per_arch = cache[latent]
    return units * max(0.1, 2 * 3 * fwd / per_arch) + (anchors + n) * 3 * fwd


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="directory for tables, measurements and per-setting JSON")
    ap.add_argument("--space", default="search_spaces/unet.yaml")
    ap.add_argument("--latents", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--threads", nargs="+", default=["1", "all"], help="thread counts; 'all' = torch's default")
    ap.add_argument("--clocks", nargs="+", default=["wall", "cpu"])
    ap.add_argument("--n", type=int, default=20, help="held-out architectures per setting (default 20)")
    ap.add_argument("--anchors", type=int, default=4, help="calibration anchors (the calibrate default, 4)")
    ap.add_argument("--device", default="cpu", help="torch device (cuda: threads and --clocks cpu do not apply)")
    ap.add_argument("--dtype", default="float32", help="float32 | float16 | bfloat16")
    ap.add_argument("--compile", action="store_true", help="time torch.compile'd units and networks")
    ap.add_argument("--estimate-only", action="store_true", help="print the estimate and stop")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    space = SearchSpace.load(a.space)
    settings = [(L, default_threads() if t == "all" else int(t), c, a.device, a.dtype, a.compile)
                for L in a.latents for t in a.threads for c in a.clocks]
    pending = [s for s in settings if not (out / f"{setting_name(*s)}.json").is_file()]
    cache: dict = {}
    est = {s: estimate_s(space, s[0], a.n, a.anchors, cache, a.device, a.dtype) for s in pending}
    print(f"{len(settings)} settings, {len(settings) - len(pending)} already done; estimated "
          f"{sum(est.values()) / 60:.0f} min for the rest (on a CPU: from 1-thread CPU time, a wall clock on "
          f"a busy machine takes longer): " + ", ".join(f"{setting_name(*s)} ~{v / 60:.0f} min" for s, v in est.items()), flush=True)
    if a.estimate_only:
        return 0
    for L, t, c, *_ in pending:
        name = setting_name(L, t, c, a.device, a.dtype, a.compile)
        be = get_backend("torch", a.device, threads=t, clock=c, dtype=a.dtype, mode="compile" if a.compile else "eager")
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = calibrate(space, be, out / f"{name}.table.jsonl", latent_size=L, anchors=a.anchors,
                              progress=False)
            t1 = time.perf_counter()
            rep = validate(space, table.path, be, n=a.n, out=out / f"{name}.measured.jsonl", progress=False,
                           policy=VALIDATE_POLICY)
        loads = [x for x in [r.get("loadavg_1m") for r in rep.rows] +
                 [v.get("loadavg_1m") for v in table.anchors.values()] if x is not None]
        res = {"setting": name, "latent_size": L, **rep.summary(),
               "calibrate_s": round(table.seconds, 1), "calibrate_s_this_run": round(t1 - t0, 1),
               "validate_s": round(time.perf_counter() - t1, 1), "units": len(table.entries),
               "loadavg_1m_start": round(load0, 2), "loadavg_1m_end": round(os.getloadavg()[0], 2),
               # the load while the anchors and held-out architectures were measured (they may be from an earlier run)
               "loadavg_1m_measured": [min(loads), max(loads)] if loads else None,
               "machine": table.header["machine"]}
        (out / f"{name}.json").write_text(json.dumps(res, indent=1))
        print(json.dumps({k: res[k] for k in ("setting", "median_abs_pct_error", "bias_pct", "within_10_pct",
                                              "spearman", "calibrate_s", "validate_s", "loadavg_1m_end")}), flush=True)
    rows = [json.loads((out / f"{setting_name(*s)}.json").read_text()) for s in settings
            if (out / f"{setting_name(*s)}.json").is_file()]
    print(f"\n{space.path.name}, torch {a.device} {a.dtype}{' compile' if a.compile else ''}, {a.n} held-out architectures per setting, default calibration\n")
    print("| latent | threads | clock | median \\|err\\| | bias | within 10% | within 5% | Spearman | calibrate s "
          "| load avg (measuring) |\n|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['latent_size']} | {r['threads']} | {r['clock']} | {r['median_abs_pct_error']:.1f}% | "
              f"{r['bias_pct']:+.1f}% | {r['within_10_pct']:.0f}% | {r['within_5_pct']:.0f}% | {r['spearman']:.3f} | "
              f"{r['calibrate_s']:.0f} | {'-'.join(f'{x:.1f}' for x in r['loadavg_1m_measured'] or [])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
