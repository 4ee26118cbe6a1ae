"""``archsearch promote RUN_DIR (--trial N | --pick knee | --pick 'min latency_ms where fd-fmnist <= X') [-o FILE]``:
write the ``snapgen train`` config (OmegaConf YAML) of a chosen trial, with its provenance."""
from __future__ import annotations


def add_arguments(p):
    p.add_argument("run_dir", help="the output_dir of `archsearch run`")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--trial", type=int, help="trial number")
    g.add_argument("--pick", help="'knee' or 'min|max METRIC [where METRIC OP NUMBER [and ...]]'")
    p.add_argument("-o", "--output", help="config file to write (default RUN_DIR/trials/<n>/train.yaml)")
    p.add_argument("--stage", default="base", choices=["base", "kd"], help="stage of the written config")
    p.add_argument("--output-dir", default=None, help="the training run's output_dir (default runs/train/<study>-trial<n>)")


def run(args):
    from pathlib import Path

    from snapgen.cache import atomic_write_bytes
    from snapgen.train.config import to_yaml

    from archsearch.promote import promote

    cfg, t = promote(args.run_dir, trial=args.trial, pick=args.pick, stage=args.stage, output_dir=args.output_dir)
    out = Path(args.output) if args.output else Path(args.run_dir) / "trials" / str(t.number) / "train.yaml"
    p = cfg.provenance
    head = (f"# snapgen train config promoted from study {p['study']!r}, trial {t.number} ({p['selection']}).\n"
            f"#   snapgen train {out}                 # stage {cfg.stage}; override with key=value\n"
            f"#   snapgen train {out} stage=kd output_dir={cfg.output_dir}-kd\n")
    atomic_write_bytes(out, (head + to_yaml(cfg)).encode())
    vals = ", ".join(f"{k}={v:.4g}" for k, v in p["objectives"].items())
    print(f"{out}: trial {t.number} ({vals})")
    return 0
