"""``archsearch ablate ABLATION [key=value ...]``: a cumulative ladder or one-at-a-time variants, >= 2 seeds."""
from __future__ import annotations


def add_arguments(p):
    p.add_argument("ablation", help="ablation file (YAML), e.g. studies/ablation_unet.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override any key (dotted paths)")


def run(args):
    from pathlib import Path

    from snapgen.clikit import blame_overrides

    from archsearch.study.ablate import print_table, run_ablation
    from archsearch.study.schema import load_ablation

    with blame_overrides(args.ablation, args.overrides):
        cfg, space = load_ablation(args.ablation, args.overrides)
    df = run_ablation(cfg, space, file=args.ablation)
    print_table(df)
    out = Path(cfg.output_dir)
    print(f"table: {out / 'ablation.csv'}; chart: {out / 'ablation.html'}")
    return 0
