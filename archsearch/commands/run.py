"""``archsearch run STUDY [key=value ...] [--workers N]``: run or continue a multi-objective study."""
from __future__ import annotations


def add_arguments(p):
    p.add_argument("study", help="study file (YAML), e.g. studies/unet.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="override any study key (dotted paths, OmegaConf grammar), e.g. n_trials=8 sampler.seed=1")
    p.add_argument("--workers", help="local worker processes sharing the storage, or auto: one per visible GPU, "
                   "each pinned to its GPU (1 without GPUs); default: the study's `workers`, 1 if unset")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (one line per trial instead)")
    p.add_argument("--worker-only", action="store_true", help="run as one worker of a study (used by --workers, "
                   "and on other hosts sharing the storage): no study files, no dashboard")


def run(args):
    from snapgen.clikit import blame_overrides
    from snapgen.errors import UserError

    from archsearch.study.runner import resolve_workers, run_study
    from archsearch.study.schema import load_study

    if args.workers is not None and args.workers != "auto" and not (args.workers.isdigit() and int(args.workers) >= 1):
        raise UserError(f"must be an integer >= 1 or auto, got {args.workers!r}", key="--workers")
    with blame_overrides(args.study, args.overrides):
        study = load_study(args.study, args.overrides)  # everything is validated before anything is written
    workers = resolve_workers(args.workers or study.cfg.workers)
    run_study(study, workers=workers, progress=not args.no_progress, worker_only=args.worker_only)
    return 0
