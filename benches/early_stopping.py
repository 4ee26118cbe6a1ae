"""Early stopping for multi-objective studies: what it saves and what it costs, measured.

    python benches/early_stopping.py RUN_WITH_ES RUN_WITHOUT_ES [--eta 3 --min-trials 4]

1. **Live, same budget.** The two runs are the same study (same sampler seed, same proxy budget and
   timeout) with ``early_stopping.enabled`` true and false, run side by side on the same machine, so
   both see the same CPU. Printed for each: architectures evaluated, trials stopped, trial-seconds
   spent, and the hypervolume reached (same stated reference point) at the same wall-clock times.
2. **Replay.** The successive-halving rule is replayed on the run *without* early stopping, whose
   trials all have their full quality curve at every rung: which trials it would have stopped, the
   time that saves (the stopped trial's remaining share of its proxy run), and the hypervolume of the
   front that is left (does the rule stop Pareto-optimal trials?). Several ``eta`` values are shown.
"""
from __future__ import annotations

import argparse
import sys
from types import SimpleNamespace

from optuna.trial import TrialState

from archsearch.study.early_stopping import SuccessiveHalving
from archsearch.study.pareto import hypervolume, hypervolume_history, load_run, pareto_report


def live(run) -> dict:
    trials = run.study.get_trials(deepcopy=False)
    evaluated = [t for t in trials if "metrics" in t.user_attrs and "duplicate_of" not in t.user_attrs]
    stopped = [t for t in trials if "early_stopped" in t.user_attrs]
    secs = sum(t.user_attrs.get("timings", {}).get("total_s", 0.0) for t in evaluated)
    rep = pareto_report(run)
    return {"evaluated": len(evaluated), "complete": sum(t.state == TrialState.COMPLETE for t in evaluated),
            "stopped": len(stopped), "trial_seconds": secs, "hypervolume": rep["hypervolume"],
            "ref": [rep["reference_point"][n] for n in run.names]}


class _Replay:
    """The minimal ``study`` the rule reads: trials seen so far, with their evals and metrics."""

    def __init__(self):
        self.trials = []

    def get_trials(self, deepcopy=False):
        return self.trials


def replay(run, eta: float, min_trials: int) -> dict:
    cfg = run.cfg
    from archsearch.study.schema import parse_constraint

    metrics_names = run.names + [c.split()[0] for c in cfg.get("constraints", [])]
    cons = [parse_constraint(c, file="", key="", metrics=metrics_names) for c in cfg.get("constraints", [])]
    quality = next(n for n in run.names if n in ("fid", "psnr", "synthetic"))
    rule = SuccessiveHalving(run.names, run.directions, quality, eta=eta, min_trials=min_trials, constraints=cons,
                             reference=dict(cfg.get("reference_point") or {}))
    steps = cfg["proxy"].get("steps") if quality != "synthetic" else None
    done = sorted([t for t in run.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                   if "duplicate_of" not in t.user_attrs], key=lambda t: t.datetime_start)
    fake, kept, saved, total = _Replay(), [], 0.0, 0.0
    for t in done:
        evals = t.user_attrs.get("evals", [])
        final = evals[-1][0] if evals else steps
        q_s = t.user_attrs.get("timings", {}).get("quality_s", 0.0)
        total += t.user_attrs.get("timings", {}).get("total_s", 0.0)
        seen, stop_at = [], None
        for s, v in evals:
            seen.append([s, v])
            if s >= final:
                break
            if rule.decide(fake, t.number, int(s), float(v), t.user_attrs.get("metrics", {})).stop:
                stop_at = s
                break
        fake.trials.append(SimpleNamespace(number=t.number, state=TrialState.COMPLETE,
                                           user_attrs={"evals": seen, "metrics": t.user_attrs.get("metrics", {})}))
        if stop_at is None:
            kept.append(t)
        else:
            saved += q_s * (1 - stop_at / final)
    ref = [pareto_report(run)["reference_point"][n] for n in run.names]
    return {"eta": eta, "stopped": len(done) - len(kept), "of": len(done), "saved_s": saved, "total_s": total,
            "hv_all": hypervolume(done, ref, run.directions), "hv_kept": hypervolume(kept, ref, run.directions)}


def rung_agreement(run) -> dict:
    """For each rung: the share of trial pairs whose quality order at that rung is their final order
    (successive halving is only as good as this)."""
    done = [t for t in run.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if "duplicate_of" not in t.user_attrs and len(t.user_attrs.get("evals", [])) > 1]
    out = {}
    rungs = sorted({s for t in done for s, _ in t.user_attrs["evals"][:-1]})
    for r in rungs:
        pts = [(dict((int(s), v) for s, v in t.user_attrs["evals"])[r], t.user_attrs["evals"][-1][1])
               for t in done if r in dict((int(s), v) for s, v in t.user_attrs["evals"])]
        pairs = [(a, b) for i, a in enumerate(pts) for b in pts[i + 1:]]
        if pairs:
            out[r] = (sum((a[0] < b[0]) == (a[1] < b[1]) for a, b in pairs), len(pairs))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("with_es")
    ap.add_argument("without_es")
    ap.add_argument("--min-trials", type=int, default=4)
    args = ap.parse_args(argv)
    on, off = load_run(args.with_es), load_run(args.without_es)
    a, b = live(on), live(off)
    print("live, same budget (side by side):")
    print(f"  {'':22}{'evaluated':>10}{'stopped':>9}{'trial-min':>11}{'hypervolume':>13}")
    for name, r in (("early stopping on", a), ("early stopping off", b)):
        print(f"  {name:22}{r['evaluated']:>10}{r['stopped']:>9}{r['trial_seconds'] / 60:>11.1f}{r['hypervolume']:>13.4f}")
    ho, hf = hypervolume_history(on, a["ref"]), hypervolume_history(off, a["ref"])
    for minute in (5, 10, 15, 20):
        def at(h):
            v = [x[1] for x in h if x[2] <= minute * 60]
            return v[-1] if v else 0.0
        if any(x[2] <= minute * 60 for x in ho + hf):
            print(f"  hypervolume after {minute:>2} min: on {at(ho):.4f}  off {at(hf):.4f}")
    for name, run in (("on", on), ("off", off)):
        for r, (agree, n) in rung_agreement(run).items():
            print(f"  run {name}: quality order at step {r} = final order for {agree}/{n} trial pairs")
    print(f"replay of the rule on the run without early stopping (min_trials={args.min_trials}):")
    for eta in (2, 3, 4):
        r = replay(off, eta, args.min_trials)
        pct = 100 * r["saved_s"] / r["total_s"] if r["total_s"] else 0.0
        print(f"  eta={eta}: stops {r['stopped']}/{r['of']} trials, saves {r['saved_s'] / 60:.1f} of "
              f"{r['total_s'] / 60:.1f} trial-min ({pct:.0f}%); hypervolume {r['hv_kept']:.4f} of {r['hv_all']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
