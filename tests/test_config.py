"""The one config loader (snapgen.config): Hydra's override grammar through its compose API, the
ranges and choices fields declare, no silent override of a user's value, and Hydra multiruns of
`snapgen train`, `archsearch run` and `archsearch ablate`, each job in its own output directory."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from snapgen.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "tests" / "bad_input" / "study.yaml"


def test_hydra_grammar_add_delete_change():
    from archsearch.study.schema import load_study

    s = load_study(STUDY, ["n_trials=5", "sampler.name=tpe", "+sampler.options.n_startup_trials=3", "~target", "proxy.steps=9"])
    assert s.cfg.n_trials == 5 and s.cfg.sampler.options == {"n_startup_trials": 3}
    assert s.cfg.target.latent_size == 128  # ~target: deleted, so the schema's default
    assert s.cfg.proxy == {"steps": 9}  # a proxy key the file does not set: only what was given comes out
    with pytest.raises(UserError, match=r"^<command line>: sampler.options.x: unknown key 'x'.*\+sampler\.options"):
        load_study(STUDY, ["sampler.options.x=1"])  # Hydra: changing needs the key, +key adds it
    with pytest.raises(UserError, match=r"^<command line>: n_trials: .*-m/--multirun"):
        load_study(STUDY, ["n_trials=1,2"])


def test_ranges_and_choices_are_declared_once_and_checked_everywhere():
    from snapgen.config import bounds, one_of, structured
    from snapgen.proxy import ProxyConfig
    from dataclasses import dataclass, field

    @dataclass(frozen=True)
    class C:
        lr: float = field(default=1.0, metadata=bounds(gt=0))
        p: float = field(default=0.5, metadata=bounds(ge=0, lt=1))
        kind: str = field(default="a", metadata=one_of(lambda: ("a", "b"), what="kind"))
        sizes: tuple[int, ...] = (1, 2)

    assert structured(C, {"sizes": [3]}).sizes == (3,)  # tuples stay tuples
    for data, line in [({"lr": 0}, "x.yaml: lr: must be > 0, got 0.0"),
                       ({"p": 1.0}, "x.yaml: p: must be >= 0 and < 1, got 1.0"),
                       ({"kind": "c"}, "x.yaml: kind: unknown kind 'c'; allowed: a, b"),
                       ({"lr": float("nan")}, "x.yaml: lr: must be a finite number, got nan"),
                       ({"lrr": 1}, "x.yaml: lrr: unknown key 'lrr'; allowed: lr, p, kind, sizes")]:
        with pytest.raises(UserError) as e:
            structured(C, data, file="x.yaml")
        assert e.value.line() == line
    with pytest.raises(UserError, match="^lr: must be > 0"):  # a config built in code is checked alike
        ProxyConfig(lr=-1.0).validate()


def test_train_config_never_overrides_a_users_value(tmp_path):
    from snapgen.train.config import load_config, proxy_config

    base = ROOT / "configs" / "embedded-base.yaml"
    cfg = load_config(base, ["eval.num_samples=64", "seed=4"])
    assert proxy_config(cfg).num_samples == 64 and cfg.seed == 4
    assert proxy_config(load_config(base, ["proxy.num_samples=32"])).num_samples == 32  # eval: unset, the proxy's
    with pytest.raises(UserError, match=r"eval.num_samples: proxy.num_samples is set too"):
        load_config(base, ["proxy.num_samples=32", "eval.num_samples=64"])
    for key in ("steps", "lr"):
        with pytest.raises(UserError, match=rf"proxy.{key}: .*set train.{key}$"):
            load_config(base, [f"proxy.{key}=3"])


def test_sweep_jobs_and_their_directories():
    from snapgen.config import job_dir, sweep

    ovs = ["seed=0,1", "stage=base,kd", "train.steps=2"]
    jobs = sweep(ovs)
    assert jobs == [["seed=0", "stage=base", "train.steps=2"], ["seed=0", "stage=kd", "train.steps=2"],
                    ["seed=1", "stage=base", "train.steps=2"], ["seed=1", "stage=kd", "train.steps=2"]]
    assert [job_dir("runs/x", j, ovs).name for j in jobs] == ["seed=0,stage=base", "seed=0,stage=kd",
                                                              "seed=1,stage=base", "seed=1,stage=kd"]
    assert len(sweep(["n_trials=range(1,4)"])) == 3
    assert job_dir("runs/x", ["output_dir=a"], ["output_dir=a,b"]) == Path("runs/x")


def test_archsearch_run_and_ablate_multirun(tmp_path, monkeypatch, capsys):
    from archsearch.cli import main
    from conftest import TINY_UNET_SPACE

    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(STUDY.with_name("space.yaml").read_text())
    (tmp_path / "study.yaml").write_text(STUDY.read_text())
    assert main(["run", "study.yaml", "-m", "sampler.seed=0,1", "n_trials=2", "--no-progress"]) == 0  # -m anywhere
    import optuna
    import yaml

    for seed in (0, 1):
        db = tmp_path / "run" / f"sampler.seed={seed}" / "study.db"
        st = optuna.load_study(study_name="ok", storage=f"sqlite:///{db}")
        assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in st.trials) >= 2  # (+ duplicates re-drawn)
        assert yaml.safe_load((db.parent / "study.yaml").read_text())["sampler"]["seed"] == seed
    assert not (tmp_path / "run" / "study.db").exists()
    (tmp_path / "space.yaml").write_text(TINY_UNET_SPACE)
    (tmp_path / "abl.yaml").write_text("name: abl\nspace: space.yaml\nquality: synthetic\nseeds: [0, 1]\n"
                                       "steps: [{name: tiny, preset: tiny}, {name: sep, arch: {conv: separable}}]\n"
                                       "target: {latent_size: 8, context_len: 8}\noutput_dir: out\n")
    assert main(["ablate", "-m", "abl.yaml", "seeds=[0,1],[2,3]"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["seeds=[0,1]", "seeds=[2,3]"]
    assert all((tmp_path / "out" / d / "ablation.csv").is_file() for d in ("seeds=[0,1]", "seeds=[2,3]"))


def test_snapgen_train_multirun(tmp_path, fmnist_small, proxy_cache, monkeypatch):
    """`snapgen train -m seed=0,1 stage=base,kd` (a tiny budget): four runs, each in its own directory."""
    from test_train import CFG, TINY, small_proxy

    from snapgen.cli import main

    out = tmp_path / "sweep"
    assert main(["train", "-m", str(CFG), *TINY, *small_proxy(fmnist_small), "train.steps=2", "eval.at_end=false",
                 "train.ckpt_every=0", "teacher.steps=2", "teacher.batch_size=8", f"output_dir={out}",
                 "seed=0,1", "stage=base,kd"]) == 0
    runs = {d.name: json.loads((d / "result.json").read_text()) for d in out.iterdir()}
    assert sorted(runs) == ["seed=0,stage=base", "seed=0,stage=kd", "seed=1,stage=base", "seed=1,stage=kd"]
    assert all(r["steps"] == 2 for r in runs.values())
    assert [runs[f"seed={s},stage=kd"]["stage"] for s in (0, 1)] == ["kd", "kd"]
    assert runs["seed=0,stage=base"]["weights_checksum"] != runs["seed=1,stage=base"]["weights_checksum"]
