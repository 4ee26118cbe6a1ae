"""Study files: schema, overrides, and one clear line (exit 2) for every mistake, writing nothing."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from archsearch.cli import main
from archsearch.study.schema import load_ablation, load_study

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["unet.yaml", "decoder.yaml"])
def test_shipped_studies_load(name):
    s = load_study(REPO / "studies" / name)
    assert s.objectives and all(o.direction in ("minimize", "maximize") for o in s.objectives)
    assert str(s.output_dir) == f"runs/{s.name}"
    assert s.storage_url == f"sqlite:///runs/{s.name}/study.db"


def test_shipped_ablation_loads():
    cfg, space = load_ablation(REPO / "studies" / "ablation_unet.yaml")
    assert len(cfg.seeds) >= 2 and [s.name for s in cfg.steps][:2] == ["a", "b"]


def test_overrides_dotted_paths(tiny_study):
    p = tiny_study()
    s = load_study(p, ["n_trials=3", "sampler.seed=7", "objectives.0.direction=maximize", "proxy.steps=5",
                       "output_dir=elsewhere"])
    assert (s.cfg.n_trials, s.cfg.sampler.seed, s.directions[0], s.cfg.proxy["steps"]) == (3, 7, "maximize", 5)
    assert s.storage_url == "sqlite:///elsewhere/study.db"


def _snapshot(d: Path) -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


BAD = {
    "yaml syntax": ("objectives: [{name: synthetic}\n", None, "YAML syntax error"),
    "unknown key": ("", ["bogus=1"], "unknown key 'bogus'"),
    "unknown nested key": ("sampler: {name: tpe, sed: 1}\n", None, "sampler.sed: unknown key 'sed'"),
    "wrong type": ("", ["n_trials=many"], "n_trials"),
    "missing space": ("", ["space=nowhere.yaml"], "space: search-space file not found"),
    "unknown objective": ("", ["objectives.0.name=beauty"], "unknown objective 'beauty'"),
    "constraint on unknown metric": ("", ["constraints=[\"vram <= 3\"]"], "constraint on unknown metric 'vram'"),
    "unknown sampler": ("", ["sampler.name=annealing"], "unknown sampler 'annealing'"),
    "unknown proxy key": ("", ["proxy.stpes=3"], "proxy.stpes: unknown key 'stpes'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_study_one_line_exit_2_nothing_written(case, tiny_study, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = tiny_study(n_trials=2)
    assert main(["run", str(p), "--no-progress"]) == 0  # an existing study
    before = _snapshot(tmp_path / "run")
    capsys.readouterr()
    text, overrides, expect = BAD[case]
    if case in ("yaml syntax", "unknown nested key"):
        bad = tmp_path / "bad.yaml"
        body = p.read_text()
        bad.write_text(text + "\n".join(ln for ln in body.splitlines() if not ln.startswith(text.split(":")[0] + ":")))
        if case == "yaml syntax":
            bad.write_text(body.replace("objectives:\n  - {name: synthetic}", "objectives: [{name: synthetic}"))
        p = bad
    with pytest.raises(SystemExit) as e:
        main(["run", str(p), *(overrides or []), "--no-progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and expect in err, err
    assert _snapshot(tmp_path / "run") == before


def test_changed_objectives_refused(tiny_study, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = tiny_study(n_trials=1)
    assert main(["run", str(p), "--no-progress"]) == 0
    with pytest.raises(SystemExit) as e:
        main(["run", str(p), "objectives=[{name: params}]", "~reference_point", "--no-progress"])
    assert e.value.code == 2 and "change name or output_dir" in capsys.readouterr().err
