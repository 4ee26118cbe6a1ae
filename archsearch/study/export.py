"""A run's trials as a pandas DataFrame (Optuna's ``trials_dataframe`` plus metrics, feasibility,
Pareto membership and the spec as JSON), for ``archsearch export`` and the notebook."""
from __future__ import annotations

import json

import pandas as pd

from archsearch.study.pareto import Run, feasible, pareto_trials


def trials_frame(run: Run) -> pd.DataFrame:
    df = run.study.trials_dataframe(attrs=("number", "state", "datetime_start", "datetime_complete", "duration",
                                           "params"), multi_index=False)
    trials = {t.number: t for t in run.study.get_trials(deepcopy=False)}
    pareto = {t.number for t in pareto_trials(run)}
    for i, n in enumerate(run.names):
        df[n] = [trials[k].values[i] if trials[k].values else None for k in df["number"]]
    metric_names = sorted({m for t in trials.values() for m in t.user_attrs.get("metrics", {})} - set(run.names))
    for m in metric_names:
        df[f"metric_{m}"] = [trials[k].user_attrs.get("metrics", {}).get(m) for k in df["number"]]
    df["feasible"] = [feasible(trials[k]) for k in df["number"]]
    df["pareto"] = [k in pareto for k in df["number"]]
    df["note"] = [trials[k].user_attrs.get("pruned_reason") or trials[k].user_attrs.get("fail_reason") or ""
                  for k in df["number"]]
    df["spec"] = [json.dumps(trials[k].user_attrs["spec"]) if "spec" in trials[k].user_attrs else None
                  for k in df["number"]]
    df["duration_s"] = df.pop("duration").dt.total_seconds()
    return df
