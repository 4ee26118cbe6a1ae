"""``archsearch``: search spaces, cost models, studies, Pareto fronts and ablations."""
from __future__ import annotations

import sys

from snapgen.clikit import run_cli

COMMANDS = {
    "cost": "params and GFLOPs (fvcore, 1 multiply-add = 1 FLOP) of a preset or spec, per stage",
}


def main(argv=None) -> int:
    return run_cli("archsearch", "archsearch", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
