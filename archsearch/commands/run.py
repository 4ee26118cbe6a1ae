"""``archsearch run STUDY [OVERRIDE ...] [-m] [--workers N]``: run or continue a multi-objective study.
Overrides use Hydra's grammar; ``-m`` sweeps (``archsearch run -m STUDY seed=0,1``: one study per
combination, each in ``output_dir/seed=0`` ... with its own storage)."""
from __future__ import annotations


def add_arguments(p):
    from snapgen.clikit import add_overrides

    p.add_argument("study", help="study file (YAML), e.g. studies/unet.yaml")
    add_overrides(p, "n_trials=8 sampler.seed=1 +sampler.options.n_startup_trials=4")
    p.add_argument("--workers", help="local worker processes sharing the storage, or auto: one per visible GPU, "
                   "each pinned to its GPU (1 without GPUs); default: the study's `workers`, 1 if unset")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (one line per trial instead)")
    p.add_argument("--worker-only", action="store_true", help="run as one worker of a study (used by --workers, "
                   "and on other hosts sharing the storage): no study files, no dashboard")


def run(args):
    from snapgen.clikit import blame_overrides, jobs
    from snapgen.errors import UserError

    from archsearch.study.runner import resolve_workers, run_study
    from archsearch.study.schema import load_study

    if args.workers is not None and args.workers != "auto" and not (args.workers.isdigit() and int(args.workers) >= 1):
        raise UserError(f"must be an integer >= 1 or auto, got {args.workers!r}", key="--workers")
    with blame_overrides(args.study, args.overrides):  # every study is checked before anything is written
        studies = [load_study(args.study, job) for job in jobs(args)]
        if args.multirun:
            studies = multirun_jobs(args, studies, load_study)
    for study in studies:
        run_study(study, workers=resolve_workers(args.workers or study.cfg.workers), progress=not args.no_progress,
                  worker_only=args.worker_only)
    return 0


def multirun_jobs(args, loaded, load):
    """Each job of a sweep again, into its own ``output_dir/<key=value,...>`` (and so its own default
    storage); a storage URL shared by the jobs needs the study name swept too."""
    from pathlib import Path

    from snapgen.clikit import jobs
    from snapgen.config import COMMAND_LINE, job_dir, swept_keys
    from snapgen.errors import UserError

    out = []
    for cfg_job, first in zip(jobs(args), loaded):
        d = job_dir(first.cfg.output_dir, cfg_job, args.overrides)
        own = f"sqlite:///{Path(first.cfg.output_dir) / 'study.db'}"
        if first.cfg.storage != own and not swept_keys(args.overrides) & {"name", "storage"}:
            raise UserError("the jobs of a sweep would share this storage under one study name: sweep name or "
                            "storage too, or leave storage unset", file=COMMAND_LINE, key="storage")
        out.append(load(args.study, cfg_job + [f"output_dir='{d}'"]) if d != Path(first.cfg.output_dir) else first)
    return out
