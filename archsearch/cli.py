"""``archsearch``: search spaces, cost models, studies, Pareto fronts and ablations."""
from __future__ import annotations

import sys

from snapgen.clikit import run_cli

COMMANDS = {
    "cost": "params and GFLOPs (fvcore, 1 multiply-add = 1 FLOP) of a preset or spec, per stage",
    "latency": "measured latency of a preset or spec on a backend (torch cpu/cuda/mps, coreml), per stage",
    "calibrate": "build a per-block latency lookup table for a search space, or --validate one",
    "run": "run or continue a declarative multi-objective study (Optuna), e.g. studies/unet.yaml",
    "status": "where a study stands: trials counted, running, Pareto size, hypervolume",
    "pareto": "the Pareto front of a study and its hypervolume against the stated reference point",
    "dashboard": "one self-contained HTML dashboard of a study (Plotly)",
    "export": "every trial of a study as CSV or Parquet (pandas)",
    "promote": "write the `snapgen train` config (ArchSpec + provenance) of a chosen trial: --trial N, --pick knee, --pick 'min M where M2 <= X'",
    "ablate": "a declarative ablation (cumulative ladder or one-at-a-time variants), >= 2 seeds each",
    "fidelity": "proxy vs a longer, multi-seed reference: Spearman/Kendall with intervals, front recovery, seed noise",
    "space": "`space check SPACE`: searched parameters the proxy cannot see (blind), invalid-sample shares",
}


def main(argv=None) -> int:
    return run_cli("archsearch", "archsearch", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
