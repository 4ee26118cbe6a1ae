"""archsearch promote: trial / knee / rule selection -> a snapgen train config with provenance."""
from __future__ import annotations

import pytest
import yaml

from archsearch.cli import main
from archsearch.promote import parse_rule, promote
from snapgen.spec import ArchSpec
from snapgen.train.config import load_config


def test_promote_trial_knee_and_rule(tiny_run, tmp_path, capsys):
    from archsearch.study.pareto import load_run, pareto_trials

    run = load_run(tiny_run)
    front = pareto_trials(run)
    n = front[0].number
    out = tmp_path / "t.yaml"
    assert main(["promote", str(tiny_run), "--trial", str(n), "-o", str(out)]) == 0
    cfg = load_config(out, ["output_dir=" + str(tmp_path / "x")])  # loads back through the trainer's schema
    assert ArchSpec.from_dict(cfg.arch).to_dict() == front[0].user_attrs["spec"]
    p = cfg.provenance
    assert p["study"] == "tiny" and p["trial"] == n and set(p["objectives"]) == {"synthetic", "params", "gflops"}
    assert p["code_version"]["commit"] and "metrics" in p and p["selection"] == f"trial {n}"
    # knee: a member of the front; rule: the minimum among trials meeting the condition
    cfg_k, tk = promote(tiny_run, pick="knee")
    assert tk.number in {t.number for t in front}
    limit = sorted(t.values[0] for t in front)[len(front) // 2]
    cfg_r, tr = promote(tiny_run, pick=f"min params where synthetic <= {limit}")
    ok = [t for t in run.study.trials if t.values and t.values[0] <= limit and "duplicate_of" not in t.user_attrs
          and t.state.name == "COMPLETE"]
    assert tr.values[1] == min(t.values[1] for t in ok)
    assert main(["promote", str(tiny_run), "--pick", "knee"]) == 0
    assert (tiny_run / "trials" / str(tk.number) / "train.yaml").is_file()


@pytest.mark.parametrize("args, msg", [
    (["--trial", "999"], "no trial 999"),
    (["--pick", "min latency_ms where fid <= 3"], "unknown metric 'latency_ms'"),
    (["--pick", "cheapest please"], "cannot parse"),
    (["--pick", "min params where synthetic <= -1"], "no completed feasible trial"),
])
def test_promote_errors_are_one_line(tiny_run, capsys, args, msg):
    with pytest.raises(SystemExit) as e:
        main(["promote", str(tiny_run), *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_parse_rule():
    assert parse_rule("min latency_ms where fd-fmnist <= 60 and params < 4e8") == (
        "min", "latency_ms", [("fd-fmnist", "<=", 60.0), ("params", "<", 4e8)])
    assert parse_rule("max fd-fmnist") == ("max", "fd-fmnist", [])


def test_a_metric_name_with_a_dash_works_in_constraints():
    from archsearch.study.schema import parse_constraint

    c = parse_constraint("fd-fmnist <= 90", file="s.yaml", key="constraints[0]", metrics=["fd-fmnist", "params"])
    assert (c.metric, str(c)) == ("fd-fmnist", "fd-fmnist <= 90") and c.violation(100.0) > 0 >= c.violation(80.0)
