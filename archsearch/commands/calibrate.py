"""``archsearch calibrate``: build a per-unit latency lookup table for a search space, or
``--validate`` one against end-to-end measurements of random held-out architectures."""
from __future__ import annotations

import json
import time
import warnings
from dataclasses import replace

from snapgen.errors import UserError

from archsearch.commands.latency import add_backend_arguments, backend_from_args


def add_arguments(p):
    p.add_argument("space", help="search-space YAML (unet or decoder)")
    add_backend_arguments(p)
    p.add_argument("-o", "--out", help="table to write (JSON lines; resumed if it exists); with --validate: "
                                       "a JSON-lines file of measured architectures (resumed if it exists)")
    p.add_argument("--latent-size", type=int, default=128, help="target latent height/width (default 128)")
    p.add_argument("--calib-latent", type=int, help="latent at which pixel-linear units are timed and scaled from "
                                                   "(default: --latent-size; smaller is faster and biased)")
    p.add_argument("--anchors", type=int, default=4, help="architectures measured end to end between the units, "
                                                         "which fix the isolated-to-in-network ratio (default 4; 0: none)")
    p.add_argument("--context-len", type=int, default=77, help="context tokens for cross-attention (default 77)")
    p.add_argument("--probes", type=int, default=0, help="units per class re-timed at the target (diagnostic, or "
                                                        "the correction of --scaling probes; default 0)")
    p.add_argument("--scaling", default="pixels", help="pixels (default): scale calibration-latent timings by the "
                                                       "pixel ratio | probes: and by a per-class probe correction")
    p.add_argument("--validate", metavar="TABLE", help="validate TABLE instead of calibrating")
    p.add_argument("--repeats", type=int, default=2, help="with --validate: timed runs per architecture after "
                                                          "one warm-up (default 2)")
    p.add_argument("--n", type=int, default=20, help="held-out architectures for --validate (default 20)")
    p.add_argument("--seed", type=int, default=1234, help="sampling seed of the held-out set (default 1234)")
    p.add_argument("--shard", default="0/1", help="with --validate: measure only architectures i %% N == K (K/N), "
                                                  "for several processes sharing -o")
    p.add_argument("--partner", metavar="TABLE", help="with --validate: a table of the other network's space; "
                                                      "also validates e2e latency = steps x UNet + decoder")
    p.add_argument("--steps", type=int, default=8, help="sampling steps of the e2e latency (default 8)")
    p.add_argument("--partner-preset", help="the other network (default: tiny decoder / snapgen-t2i UNet)")
    p.add_argument("--partner-space", help="the space holding --partner-preset (default: the shipped one)")
    p.add_argument("--allow-mismatch", action="store_true", help="with --validate: measure at this backend setting "
                                                                 "even if the table was calibrated at another")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args):
    from archsearch.latency.table import calibrate, validate
    from archsearch.space import SearchSpace

    backend = backend_from_args(args)
    space = SearchSpace.load(args.space)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if args.validate:
            if args.n < 1:
                raise UserError(f"must be >= 1, got {args.n}", key="--n")
            try:
                k, m = (int(x) for x in args.shard.split("/"))
                assert 0 <= k < m
            except (ValueError, AssertionError):
                raise UserError(f"must be K/N with 0 <= K < N, got {args.shard!r}", key="--shard") from None
            if m > 1 and not args.out:
                raise UserError("shards share their measurements through -o FILE", key="--shard")
            from archsearch.latency.table import VALIDATE_POLICY

            if args.repeats < 1:
                raise UserError(f"must be >= 1, got {args.repeats}", key="--repeats")
            pol = replace(VALIDATE_POLICY, min_repeats=args.repeats, max_repeats=args.repeats)
            rep = validate(space, args.validate, backend, n=args.n, seed=args.seed, out=args.out, policy=pol,
                           progress=not args.no_progress, context_len=args.context_len, shard=(k, m),
                           allow_mismatch=args.allow_mismatch, partner=args.partner, steps=args.steps,
                           partner_preset=args.partner_preset, partner_space=args.partner_space)
            if args.json:
                print(json.dumps(rep.to_dict()))
                return 0
            print(f"table {args.validate} vs measured, {rep.n} held-out architectures of {args.space} "
                  f"(seed {args.seed}), latent {rep.latent_size}, {rep.backend} {rep.device}, {rep.threads} threads, "
                  f"{rep.clock} clock")
            print(f"  {'#':>3}{'predicted ms':>14}{'measured ms':>14}{'error':>9}")
            for r in rep.rows:
                print(f"  {r['index']:>3}{r['predicted_ms']:14.1f}{r['measured_ms']:14.1f}{r['pct_error']:8.1f}%")
            print(f"  |error|: median {rep.median_abs_pct_error:.1f}%  mean {rep.mean_abs_pct_error:.1f}%  "
                  f"p90 {rep.p90_abs_pct_error:.1f}%  max {rep.max_abs_pct_error:.1f}%;  bias (mean signed) "
                  f"{rep.bias_pct:+.1f}%;  within 10%: {rep.within_10_pct:.0f}%, within 5%: {rep.within_5_pct:.0f}%;  "
                  f"Spearman {rep.spearman:.3f};  lookup {rep.predict_ms_per_trial:.2f} ms/trial")
            print("  worst: " + ", ".join(f"#{w['index']} {w['pct_error']:+.1f}%" for w in rep.worst)
                  + f";  anchor correction x{rep.anchor_scale:.3f}")
            if rep.e2e:
                e = rep.e2e
                print(f"  e2e ({e['steps']} steps x UNet + decoder, partner {e['partner_preset']}: predicted "
                      f"{e['partner_predicted_ms']:.1f} / measured {e['partner_measured_ms']:.1f} ms): median |error| "
                      f"{e['median_abs_pct_error']:.1f}%, bias {e['bias_pct']:+.1f}%, within 10%: {e['within_10_pct']:.0f}%")
            if rep.scatter:
                print(f"  scatter: {rep.scatter}; summary appended to {args.validate}")
            return 0
        if not args.out:
            raise UserError("name the table to write with -o TABLE (or give --validate TABLE)", key="-o")
        calib = args.calib_latent or args.latent_size
        t0 = time.perf_counter()
        table = calibrate(space, backend, args.out, latent_size=args.latent_size, calib_latent=calib,
                          context_len=args.context_len, probes=args.probes, progress=not args.no_progress,
                          scaling=args.scaling, anchors=args.anchors)
        took = time.perf_counter() - t0
    summary = {"table": args.out, "units": len(table.entries), "probes": len(table.probes),
               "anchors": len(table.anchors), "anchor_scale": table.anchor_scale,
               "seconds_this_run": round(took, 1), "seconds_total": round(table.seconds, 1),
               "corrections": table.corrections(), **{k: table.header[k] for k in (
                   "backend", "device", "threads", "clock", "latent_size", "calib_latent")}}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"wrote {args.out}: {summary['units']} units + {summary['probes']} probes, {args.space} "
              f"({table.header['space']['kind']}), {summary['backend']} {summary['device']}, {summary['threads']} "
              f"threads, {summary['clock']} clock; timed at latent {calib}, predicting latent {args.latent_size}; "
              f"{took / 60:.1f} min this run, {table.seconds / 60:.1f} min in all; measured / sum of units "
              f"x{table.anchor_scale:.3f} over {len(table.anchors)} anchor architectures")
        for c, v in sorted(summary["corrections"].items()):
            print(f"  probe ratio / pixel ratio  {c:<26} x{v:.3f}"
                  f"{'  (applied)' if table.scaling == 'probes' else '  (diagnostic)'}")
    return 0
