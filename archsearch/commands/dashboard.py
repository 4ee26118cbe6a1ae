"""``archsearch dashboard RUN_DIR [-o FILE]``: one self-contained HTML file (plotly.js embedded)."""
from __future__ import annotations


def add_arguments(p):
    p.add_argument("run_dir", help="the output_dir of `archsearch run`")
    p.add_argument("-o", "--output", help="HTML file to write (default RUN_DIR/dashboard.html)")


def run(args):
    from pathlib import Path

    from archsearch.study.dashboard import write_dashboard
    from archsearch.study.pareto import load_run

    run_ = load_run(args.run_dir)
    path = write_dashboard(run_, args.output or Path(args.run_dir) / "dashboard.html")
    print(path)
    return 0
