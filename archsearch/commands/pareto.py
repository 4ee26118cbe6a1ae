"""``archsearch pareto RUN_DIR [--json]``: the non-dominated trials, their objectives and specs, and the
hypervolume against the stated reference point."""
from __future__ import annotations


def add_arguments(p):
    p.add_argument("run_dir", help="the output_dir of `archsearch run`")
    p.add_argument("--json", action="store_true", help="print one JSON object (with each trial's spec)")


def run(args):
    from archsearch.study.pareto import dumps, load_run, pareto_report, print_pareto

    rep = pareto_report(load_run(args.run_dir))
    if args.json:
        print(dumps(rep))
    else:
        print_pareto(rep)
    return 0
