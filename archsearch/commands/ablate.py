"""``archsearch ablate ABLATION [OVERRIDE ...] [-m]``: a cumulative ladder or one-at-a-time variants, >= 2 seeds.
Overrides use Hydra's grammar; ``-m`` sweeps (one ablation per combination, each in ``output_dir/key=value,...``)."""
from __future__ import annotations


def add_arguments(p):
    from snapgen.clikit import add_overrides

    p.add_argument("ablation", help="ablation file (YAML), e.g. studies/ablation_unet.yaml")
    add_overrides(p, "seeds=[0,1,2] +proxy.steps=30")


def run(args):
    import dataclasses
    from pathlib import Path

    from snapgen.clikit import blame_overrides, jobs
    from snapgen.config import job_dir

    from archsearch.study.ablate import print_table, run_ablation
    from archsearch.study.schema import load_ablation

    todo = jobs(args)
    with blame_overrides(args.ablation, args.overrides):  # every job is checked before anything runs
        loaded = [load_ablation(args.ablation, job) for job in todo]
    for job, (cfg, space) in zip(todo, loaded):
        if args.multirun:
            cfg = dataclasses.replace(cfg, output_dir=str(job_dir(cfg.output_dir, job, args.overrides)))
        df = run_ablation(cfg, space, file=args.ablation)
        print_table(df)
        out = Path(cfg.output_dir)
        print(f"table: {out / 'ablation.csv'}; chart: {out / 'ablation.html'}")
    return 0
