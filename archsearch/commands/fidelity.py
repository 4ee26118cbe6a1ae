"""``archsearch fidelity (RUN_DIR | STUDY | --presets a,b,...) [key=value ...]``: how well the proxy's
ranking predicts a longer, better-measured training (see :mod:`archsearch.fidelity`)."""
from __future__ import annotations

from pathlib import Path


def add_arguments(p):
    p.add_argument("source", nargs="?", help="a run directory (output_dir of `archsearch run`) or a study file "
                   "(its run; with --presets, its settings). With --presets alone: studies/unet.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="reference settings: keys of the study's proxy: section (synthetic: for the synthetic "
                        "metric), dotted for nested ones, e.g. num_samples=1000 sample_steps=16; right after "
                        "the source, as for `archsearch run`")
    p.add_argument("--presets", help="comma-separated presets of the study's space and/or spec files, instead of "
                   "the run's trials (the proxy side is then evaluated too, with the same seeds)")
    p.add_argument("--k", type=int, default=12, help="architectures from a run: its Pareto front plus a sample of the "
                   "rest stratified by proxy quality (default 12)")
    p.add_argument("--budget-mult", type=float, default=4.0, help="reference budget: x M proxy steps (synthetic: "
                   "evals); default 4")
    p.add_argument("--seeds", type=int, default=2, help="reference seeds: the study's seed and the next S-1 "
                   "(default 2)")
    p.add_argument("--proxy-seeds", type=int, help="proxy seeds (default: a run's own, its `seeds`; S for "
                   "presets); more seeds measure the proxy's own noise")
    p.add_argument("--resolution", type=int, help="reference resolution in px (proxy and embedded autoencoder); "
                   "a multiple of the autoencoder's factor x 2^(stages-1)")
    p.add_argument("--select-seed", type=int, default=0, help="seed of the stratified sample (default 0)")
    p.add_argument("--workers", type=int, help="worker processes (default: the study's `workers`)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples per interval (default 2000)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (one line per evaluation)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")


def run(args):
    from snapgen.errors import UserError

    from archsearch.fidelity.measure import execute, plan
    from archsearch.fidelity.report import dumps, print_report

    source, overrides = args.source, list(args.overrides)
    if source is not None and "=" in source and not Path(source).exists():
        source, overrides = None, [source] + overrides  # `fidelity --presets a,b key=value`: no source
    if args.workers is not None and args.workers < 1:
        raise UserError(f"must be >= 1, got {args.workers}", file="<command line>", key="--workers")
    if args.bootstrap < 100:
        raise UserError(f"must be >= 100, got {args.bootstrap}", file="<command line>", key="--bootstrap")
    pl = plan(source, presets=args.presets, k=args.k, budget_mult=args.budget_mult, seeds=args.seeds,
              proxy_seeds=args.proxy_seeds, resolution=args.resolution, overrides=overrides,
              select_seed=args.select_seed)
    workers = args.workers or pl.study.cfg.workers
    rep = execute(pl, workers=workers, progress=not args.no_progress, n_resamples=args.bootstrap)
    if args.json:
        print(dumps(rep))
    else:
        print_report(rep)
        print(f"report: {pl.dir / 'report.json'}\nplot:   {pl.dir / 'fidelity.html'}")
    return 0
