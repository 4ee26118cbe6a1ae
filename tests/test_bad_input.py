"""Bad input, by class (issue 14 item 6): the CLIs over the corpus in tests/bad_input/ (binary and non-UTF-8
files, a `when:` naming no field, NaN and infinities, a latent size the UNet cannot downsample, negative and
other out-of-range values, in files and on the command line). Each is exit 2 and one line on stderr naming
the file (or `<command line>`) and the key; nothing is written."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parent / "bad_input"
CL = "<command line>"

# (program, arguments, file named, key named, what the message says)
CASES = {
    "binary study": ("archsearch", ["run", "study_binary.yaml"], "study_binary.yaml", None, "binary file"),
    "latin-1 study": ("archsearch", ["run", "study_latin1.yaml"], "study_latin1.yaml", None, "not UTF-8"),
    "binary space": ("archsearch", ["run", "study_space_binary.yaml"], "study_space_binary.yaml", "space",
                     "space_binary.yaml: a binary file"),
    "latin-1 space": ("archsearch", ["run", "study_space_latin1.yaml"], "study_space_latin1.yaml", "space",
                      "space_latin1.yaml: not UTF-8"),
    "when: unknown field": ("archsearch", ["run", "study_space_when_unknown.yaml"], "study_space_when_unknown.yaml",
                            "space", "search.dimensions.ffn_ratio.when.convv: unknown field 'convv'"),
    "NaN in a space": ("archsearch", ["run", "study_space_nan.yaml"], "study_space_nan.yaml", "space",
                       "search.dimensions.ffn_ratio.choices[1]: must be a finite number"),
    "inf in a preset": ("archsearch", ["run", "study_space_inf_preset.yaml"], "study_space_inf_preset.yaml", "space",
                        "presets.tiny.arch.ffn_ratio: must be a finite number"),
    "inf in a study": ("archsearch", ["run", "study_inf_timeout.yaml"], "study_inf_timeout.yaml", "timeout",
                       "must be a finite number, got inf"),
    "latent size": ("archsearch", ["run", "study_latent_size.yaml"], "study_latent_size.yaml", "target.latent_size",
                    "not divisible by 2"),
    "negative proxy lr": ("archsearch", ["run", "study_negative_lr.yaml"], "study_negative_lr.yaml", "proxy.lr",
                          "must be > 0, got -0.001"),
    "eta out of range": ("archsearch", ["run", "study_eta.yaml"], "study_eta.yaml", "early_stopping.eta",
                         "must be > 1, got 0.5"),
    "evals out of range": ("archsearch", ["run", "study_synthetic_evals.yaml"], "study_synthetic_evals.yaml",
                           "synthetic.evals", "must be >= 1, got 0"),
    "override: negative lr": ("archsearch", ["run", "study.yaml", "+proxy.lr=-1"], CL, "proxy.lr", "must be > 0"),
    "override: nan": ("archsearch", ["run", "study.yaml", "+proxy.cfg_scale=nan"], CL, "proxy.cfg_scale",
                      "must be a finite number"),
    "override: latent size": ("archsearch", ["run", "study.yaml", "target.latent_size=5"], CL, "target.latent_size",
                              "not divisible by 2"),
    "override: unknown key": ("archsearch", ["run", "study.yaml", "n_trails=3"], CL, "n_trails", "allowed: "),
    "override: sweep without -m": ("archsearch", ["run", "study.yaml", "n_trials=1,2"], CL, "n_trials", "-m"),
    "override: bad grammar": ("archsearch", ["run", "study.yaml", "n_trials=[1"], CL, "n_trials", "cannot parse override"),
    "spec NaN": ("archsearch", ["cost", "spec_nan.yaml"], "spec_nan.yaml", "ffn_ratio", "must be a finite number"),
    "spec binary": ("archsearch", ["cost", "spec_binary.yaml"], "spec_binary.yaml", None, "binary file"),
    "decoder spec inf": ("archsearch", ["cost", "decoder_spec_inf.yaml"], "decoder_spec_inf.yaml", "conv_expansion",
                         "must be a finite number"),
    "train negative lr": ("snapgen", ["train", "train_negative_lr.yaml"], "train_negative_lr.yaml", "train.lr",
                          "must be > 0, got -0.002"),
    "train NaN weight": ("snapgen", ["train", "train_nan_weight.yaml"], "train_nan_weight.yaml", "kd.out_weight",
                         "must be a finite number"),
    "train ema out of range": ("snapgen", ["train", "train_ema.yaml"], "train_ema.yaml", "train.ema_decay",
                               "must be >= 0 and < 1, got 1.5"),
    "train latent size": ("snapgen", ["train", "train_latent_size.yaml"], "train_latent_size.yaml", "proxy.resolution",
                          "cannot downsample by 2"),
    "train latin-1": ("snapgen", ["train", "train_latin1.yaml"], "train_latin1.yaml", None, "not UTF-8"),
    "train binary": ("snapgen", ["train", "train_binary.yaml"], "train_binary.yaml", None, "binary file"),
    "train arch NaN": ("snapgen", ["train", "train_arch_nan.yaml"], "train_arch_nan.yaml", "arch.conv_expansion",
                       "must be a finite number"),
    "train arch negative": ("snapgen", ["train", "train_arch_negative.yaml"], "train_arch_negative.yaml",
                            "arch.head_dim", "must be a positive integer"),
    "train override: negative lr": ("snapgen", ["train", "train.yaml", "train.lr=-1e-3"], CL, "train.lr", "must be > 0"),
    "train override: inf": ("snapgen", ["train", "train.yaml", "train.grad_clip=inf"], CL, "train.grad_clip",
                            "must be a finite number"),
    "train override: negative steps": ("snapgen", ["train", "train.yaml", "train.steps=-5"], CL, "train.steps",
                                       "must be >= 1"),
    "train override: latent size": ("snapgen", ["train", "train.yaml", "proxy.resolution=20"], CL, "proxy.resolution",
                                    "cannot downsample"),
}


def test_the_corpus_is_all_used():
    used = {a for _, args, *_ in CASES.values() for a in args if a.endswith(".yaml")}
    referenced = {"space.yaml", "space_binary.yaml", "space_latin1.yaml", "space_when_unknown.yaml", "space_nan.yaml",
                  "space_inf_preset.yaml"}
    assert {p.name for p in CORPUS.iterdir()} == used | referenced


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2(case, tmp_path, monkeypatch, capsys):
    from archsearch.cli import main as archsearch
    from snapgen.cli import main as snapgen

    prog, args, file, key, needle = CASES[case]
    for p in CORPUS.iterdir():
        shutil.copy(p, tmp_path / p.name)
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SystemExit) as e:
        (archsearch if prog == "archsearch" else snapgen)(args)
    assert e.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1, err
    head = f"error: {file}: {key}: " if key else f"error: {file}: "
    assert err[0].startswith(head) and needle in err[0], err[0]
    assert "Traceback" not in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
