"""``archsearch export RUN_DIR --csv|--parquet [-o FILE]``: every trial as a table (pandas)."""
from __future__ import annotations


def add_arguments(p):
    p.add_argument("run_dir", help="the output_dir of `archsearch run`")
    fmt = p.add_mutually_exclusive_group(required=True)
    fmt.add_argument("--csv", action="store_true")
    fmt.add_argument("--parquet", action="store_true")
    p.add_argument("-o", "--output", help="file to write (default RUN_DIR/trials.csv or .parquet)")


def run(args):
    from pathlib import Path

    from snapgen.errors import UserError

    from archsearch.study.export import trials_frame
    from archsearch.study.pareto import load_run

    df = trials_frame(load_run(args.run_dir))
    ext = "csv" if args.csv else "parquet"
    out = Path(args.output or Path(args.run_dir) / f"trials.{ext}")
    if args.csv:
        df.to_csv(out, index=False)
    else:
        try:
            df.to_parquet(out, index=False)
        except ImportError as e:
            raise UserError(f"parquet needs pyarrow: {e}", key="--parquet") from None
    print(f"{out} ({len(df)} trials, {len(df.columns)} columns)")
    return 0
