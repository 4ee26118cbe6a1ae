"""`archsearch pareto/status/export`: the non-dominated set, the hypervolume, tables."""
from __future__ import annotations

import json

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from archsearch.cli import main
from archsearch.study.pareto import Run, hypervolume, load_run, pareto_report


def test_front_is_non_dominated_and_feasible(tiny_run):
    run = load_run(tiny_run)
    rep = pareto_report(run)
    done = [t for t in run.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if all(v <= 0 for v in t.constraints.values())]
    front = {p["number"] for p in rep["pareto"]}
    assert front
    for p in rep["pareto"]:
        v = np.array(list(p["values"].values()))
        for t in done:
            w = np.array(t.values)
            assert not (np.all(w <= v) and np.any(w < v)), f"trial {p['number']} dominated by {t.number}"
        assert p["spec"]["stages"]
    assert rep["reference_point"] == {"synthetic": 80.0, "params": 2.0e6, "gflops": 0.05}
    assert "stated" in rep["reference_point_note"]
    assert 0 < rep["hypervolume"] < 1


def test_hypervolume_scaling():
    class T:  # minimal FrozenTrial stand-in: values + constraints
        def __init__(self, v):
            self.values, self.constraints = v, {}

    # One point at half the reference on both axes dominates a quarter of the box.
    assert hypervolume([T([5.0, 50.0])], [10.0, 100.0], ["minimize", "minimize"]) == pytest.approx(0.25)
    # Maximised objectives scale as ref / v: psnr 20 against ref 10 -> 0.5.
    assert hypervolume([T([20.0, 50.0])], [10.0, 100.0], ["maximize", "minimize"]) == pytest.approx(0.25)
    # A point beyond the reference point adds nothing.
    assert hypervolume([T([20.0, 50.0])], [10.0, 100.0], ["minimize", "minimize"]) == 0.0


def test_cli_pareto_status_export(tiny_run, capsys):
    assert main(["pareto", str(tiny_run), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["objectives"] == ["synthetic", "params", "gflops"] and rep["pareto"]
    assert main(["pareto", str(tiny_run)]) == 0
    out = capsys.readouterr().out
    assert "hypervolume" in out and "reference point" in out
    assert main(["status", str(tiny_run), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["complete"] and st["counted"] == 10
    assert main(["export", str(tiny_run), "--csv", "-o", str(tiny_run / "t.csv")]) == 0
    assert main(["export", str(tiny_run), "--parquet", "-o", str(tiny_run / "t.parquet")]) == 0
    a, b = pd.read_csv(tiny_run / "t.csv"), pd.read_parquet(tiny_run / "t.parquet")
    assert len(a) == len(b) == len(load_run(tiny_run).study.trials)  # every trial, counted or not
    assert {"number", "state", "synthetic", "params", "gflops", "feasible", "pareto", "spec"} <= set(a.columns)
    assert set(a.loc[a["pareto"], "number"]) == {p["number"] for p in rep["pareto"]}


def test_not_a_run_dir(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["pareto", str(tmp_path)])
    assert e.value.code == 2 and "not a run directory" in capsys.readouterr().err
