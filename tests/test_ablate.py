"""`archsearch ablate`: cumulative ladders and one-at-a-time variants, seeds, deltas, resumption."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from archsearch.cli import main
from conftest import TINY_UNET_SPACE

LADDER = """\
name: ladder
space: space.yaml
mode: {mode}
{base}
quality: synthetic
steps:
  - {{name: tiny, preset: tiny, description: start}}
  - {{name: sep, arch: {{conv: separable}}, paper: "-x% params"}}
  - {{name: mqa, arch: {{attention: mqa}}}}
seeds: [0, 1]
target: {{latent_size: 8, context_len: 8}}
output_dir: out-{mode}
"""


@pytest.mark.parametrize("mode", ["cumulative", "one_at_a_time"])
def test_ablation_table_chart_deltas_resume(mode, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(TINY_UNET_SPACE)
    f = tmp_path / "abl.yaml"
    f.write_text(LADDER.format(mode=mode, base="base: tiny" if mode == "one_at_a_time" else ""))
    assert main(["ablate", str(f)]) == 0
    out = tmp_path / f"out-{mode}"
    df = pd.read_csv(out / "ablation.csv")
    steps = ["tiny", "tiny", "sep", "mqa"] if mode == "one_at_a_time" else ["tiny", "sep", "mqa"]
    assert df["step"].tolist() == steps
    assert (df["seeds"] == 2).all() and (df["quality_std"] >= 0).all()
    # Deltas: vs the previous step on a ladder; vs the base for one-at-a-time.
    ref = df["params_M"].shift(1) if mode == "cumulative" else df["params_M"].iloc[0]
    expect = (100 * (df["params_M"] / ref - 1)).round(1)
    assert df["d_params_M_%"].iloc[1:].tolist() == pytest.approx(expect.iloc[1:].tolist())
    if mode == "cumulative":  # mqa keeps the separable convs of the step before
        spec = [json.loads(l)["spec"] for l in (out / "results.jsonl").read_text().splitlines()][-1]
        assert spec["stages"][0]["conv"] == "separable" and spec["stages"][1]["attention"] == "mqa"
    html = (out / "ablation.html").read_text()
    assert "plotly.js v" in html and "Plotly.newPlot" in html
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == len(set(steps)) * 2  # (step, seed) pairs; the base is measured once
    capsys.readouterr()
    assert main(["ablate", str(f)]) == 0  # resumes: nothing re-run
    assert (out / "results.jsonl").read_text().splitlines() == lines
    assert "d_params_M_%" in capsys.readouterr().out


def test_ablation_errors(tmp_path, capsys):
    (tmp_path / "space.yaml").write_text(TINY_UNET_SPACE)
    f = tmp_path / "abl.yaml"
    f.write_text(LADDER.format(mode="one_at_a_time", base=""))
    with pytest.raises(SystemExit) as e:
        main(["ablate", str(f)])
    assert e.value.code == 2 and "one_at_a_time needs a base preset" in capsys.readouterr().err
    f.write_text(LADDER.format(mode="cumulative", base="").replace("preset: tiny", "preset: nope"))
    with pytest.raises(SystemExit):
        main(["ablate", str(f)])
    assert "unknown preset 'nope'" in capsys.readouterr().err
