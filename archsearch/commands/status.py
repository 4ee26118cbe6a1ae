"""``archsearch status RUN_DIR``: where a study stands."""
from __future__ import annotations


def add_arguments(p):
    p.add_argument("run_dir", help="the output_dir of `archsearch run`")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args):
    import json

    from optuna.trial import TrialState

    from archsearch.study.pareto import load_run, pareto_report
    from archsearch.study.runner import is_counted

    run_ = load_run(args.run_dir)
    trials = run_.study.get_trials(deepcopy=False)
    rep = pareto_report(run_)
    n = run_.cfg.get("n_trials")
    running = [t.number for t in trials if t.state == TrialState.RUNNING]
    counted = sum(map(is_counted, trials))
    secs = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials
               if t.datetime_complete and t.datetime_start)
    stopped = [t for t in trials if "early_stopped" in t.user_attrs]
    out = {"study": run_.cfg["name"], "storage": run_.cfg.get("storage"), "n_trials": n, "counted": counted,
           "states": rep["trials"], "running": running, "pareto_size": len(rep["pareto"]),
           "hypervolume": rep["hypervolume"], "trial_seconds": secs, "early_stopped": len(stopped),
           "complete": counted >= (n or 0)}
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"study {out['study']}  ({out['storage']})")
    print(f"  trials    {counted}/{n} counted" + (" - complete" if out["complete"] else "") +
          f"; {', '.join(f'{k.lower()} {v}' for k, v in rep['trials'].items())}")
    if running:
        print(f"  running   {', '.join(map(str, running))}")
    print(f"  early-stopped {len(stopped)}; trial time {secs / 60:.1f} min in all")
    print(f"  Pareto front {len(rep['pareto'])} trial(s); hypervolume {rep['hypervolume']:.4f}")
    return 0
