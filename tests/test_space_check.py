"""`archsearch space check`: searched parameters the proxy cannot see, and invalid-sample shares."""
from __future__ import annotations

import json
import textwrap

from dataclasses import replace

import pytest

from archsearch.cli import main
from snapgen.presets import REPO_ROOT

# Planted: under BLINDING (below), stage0.channels 16 and 32 both become 16 channels and `layers` 3 and 4 both
# become 2. Honest: stage1.channels (64/96/128 -> 32/48/64), ffn_ratio.
PLANTED = textwrap.dedent("""\
    kind: unet
    presets:
      base:
        arch:
          latent_channels: 4
          context_dim: 32
          head_dim: 16
          norm_groups: 8
          channels: [32, 64]
          layers: 3
          transformer_depth: [0, 1]
          cross_attention: [false, true]
    search:
      base: base
      dimensions:
        channels: {per_stage: true, choices: [[16, 32], [64, 96, 128]]}
        layers: {choices: [3, 4]}
        ffn_ratio: {choices: [2, 3, 4]}
    """)

# Known invalid shares under uniform sampling: full size, res_block false with transformer_depth 0 in
# stage 1 (1/2 x 1/2 = 1/4); proxy size (width 0.5, head_dim 16: 64 -> 32 channels, 4 -> 2 heads), gqa with
# kv_heads 4 (1/2 x 1/3 = 1/6 of the valid ones).
# A proxy that blinds them: quantum lcm(16, 8) = 16 makes 16 and 32 channels both 16 at width 0.5, and depths
# 3 and 4 keep their first 2 blocks plus round(1 x 0.1) = round(2 x 0.1) = 0.
BLINDING = ["width_mult=0.5", "depth_mult=0.1", "head_dim=16"]

KNOWN_SHARES = textwrap.dedent("""\
    kind: unet
    presets:
      base:
        arch:
          latent_channels: 4
          context_dim: 32
          head_dim: 16
          norm_groups: 8
          channels: [64, 64]
          layers: 1
          transformer_depth: [1, 1]
    search:
      base: base
      dimensions:
        res_block: {per_stage: true, choices: [[true], [true, false]]}
        transformer_depth: {per_stage: true, choices: [[1], [0, 1]]}
        attention: {choices: [mhsa, gqa], when: has_attention}
        kv_heads: {choices: [1, 2, 4], when: {attention: gqa}}
    """)


def _check(args, capsys) -> tuple[int, dict]:
    capsys.readouterr()
    rc = main(["space", "check", *args, "--json"])
    return rc, json.loads(capsys.readouterr().out)


def test_a_planted_blind_parameter_is_found(tmp_path, capsys):
    p = tmp_path / "space.yaml"
    p.write_text(PLANTED)
    rc, rep = _check([str(p), "--proxy", *BLINDING, "--n", "100"], capsys)
    assert rc == 1
    assert sorted(rep["blind"]) == ["layers", "stage0.channels"]
    by = {x["parameter"]: x for x in rep["parameters"]}
    assert by["stage0.channels"]["blind_at"][0]["same_proxy_model"] == [[16, 32]]
    assert by["stage0.channels"]["proxy_values"] == {"16": 16, "32": 16}
    assert by["stage1.channels"]["proxy_values"] == {"64": 32, "96": 48, "128": 64}
    assert not by["stage1.channels"]["blind"] and not by["ffn_ratio"]["blind"]
    assert by["layers"]["points"] == 1 + 4  # the base and four random valid points
    # the same space at a proxy that keeps widths and depths: nothing blind, exit 0
    rc, rep = _check([str(p), "--proxy", "width_mult=1", "depth_mult=1", "--n", "100"], capsys)
    assert rc == 0 and rep["blind"] == []
    # the text report names them too
    assert main(["space", "check", str(p), "--proxy", *BLINDING, "--n", "10"]) == 1
    out = capsys.readouterr().out
    assert "2 of 4 searched parameters are blind: stage0.channels, layers" in out


def test_invalid_shares_are_counted(tmp_path, capsys):
    p = tmp_path / "space.yaml"
    p.write_text(KNOWN_SHARES)
    n = 1200
    rc, rep = _check([str(p), "--proxy", "width_mult=0.5", "head_dim=16", "--n", str(n), "--seed", "3"], capsys)
    s = rep["samples"]
    full, prox = s["invalid_full_size"], s["invalid_proxy_size"]
    assert s["n"] == n and s["valid"] + full["count"] + prox["count"] == n
    assert full["share"] == pytest.approx(0.25, abs=0.05)  # binomial sd 0.0125
    assert prox["share_of_tested"] == pytest.approx(1 / 6, abs=0.05)  # sd ~0.012
    assert prox["share"] == pytest.approx(prox["count"] / n)
    assert [t["reason"] for t in full["top"]] == [
        "stages[#].res_block: a stage without residual blocks needs transformer_depth >= #"]
    assert [t["reason"] for t in prox["top"]] == ["stages[#].kv_heads: gqa needs kv_heads >= # dividing heads=#, got #"]
    assert "got 4" in prox["top"][0]["example"]
    # kv_heads is tested where gqa is on (the base with its `when` satisfied): 4 cannot be built at proxy size
    kv = next(x for x in rep["parameters"] if x["parameter"] == "kv_heads")
    assert kv["points"] >= 1 and not kv["blind"] and any("4 (proxy size)" in k for k in kv["unbuildable"])


def test_shipped_spaces_have_no_blind_parameter(capsys):
    """The shipped spaces with the shipped proxy: every searched choice changes the proxy model (issue 12 found
    four blind ones under the previous scaling: layers, stage0.channels, stage1/2.transformer_depth)."""
    rc, rep = _check([str(REPO_ROOT / "search_spaces/unet.yaml"), "--study", str(REPO_ROOT / "studies/unet.yaml"),
                      "--n", "200"], capsys)
    assert rc == 0 and rep["blind"] == [] and rep["untested"] == []
    assert rep["proxy"] == {"width_mult": 0.125, "depth_mult": 0.5, "head_dim": 8, "norm_groups": 8}
    by = {x["parameter"]: x for x in rep["parameters"]}
    assert by["stage2.transformer_depth"]["proxy_values"] == {"2": 2, "4": 3, "6": 4}
    assert by["layers"]["proxy_values"] == {"1": 1, "2": 2}
    assert by["stage0.channels"]["proxy_values"] == {"192": 24, "256": 32, "320": 40}
    c = rep["proxy_cost_at_base"]
    assert c["layers"] == [2, 2, 2] and c["transformer_depth"] == [1, 2, 3] and c["params"] > 0
    rc, rep = _check([str(REPO_ROOT / "search_spaces/decoder.yaml"), "--study", str(REPO_ROOT / "studies/decoder.yaml"),
                      "--n", "200"], capsys)
    assert rc == 0 and rep["blind"] == [] and rep["kind"] == "decoder"


def test_proxy_scaling_keeps_order_and_small_depths():
    from snapgen.presets import load_preset

    spec = load_preset(None, "snapgen-t2i")
    for m in (0.25, 0.5, 1.0):
        got = []
        for d in range(0, 13):
            st = spec.stages[2]
            one = replace(spec, stages=spec.stages[:2] + (replace(st, transformer_depth=d, layers=max(d, 1)),))
            s = one.scaled(1.0, m, head_dim=8, norm_groups=8).stages[2]
            got.append(s.transformer_depth)
        assert got == sorted(got) and got[:3] == [0, 1, 2], (m, got)  # order kept, small depths exact
    s = spec.scaled(0.125, 0.5, head_dim=8, norm_groups=8)
    assert [st.channels for st in s.stages] == [32, 64, 112] and s.head_dim == 8
    # with depth_mult 1 and a quantum that divides every width, nothing changes but the head dim
    same = spec.scaled(1.0, 1.0, head_dim=32, norm_groups=32)
    assert [(a.channels, a.layers, a.transformer_depth) for a in same.stages] == [
        (b.channels, b.layers, b.transformer_depth) for b in spec.stages]


@pytest.mark.parametrize("args, message", [
    (["--proxy", "width=0.5"], "proxy.width: unknown key 'width'"),
    (["--proxy", "width_mult"], "must look like key=value"),
    (["--n", "-1"], "--n: must be >= 0"),
])
def test_bad_input(tmp_path, capsys, args, message):
    p = tmp_path / "space.yaml"
    p.write_text(PLANTED)
    with pytest.raises(SystemExit) as e:
        main(["space", "check", str(p), *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_bad_space_and_action(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["space", "check", str(tmp_path / "missing.yaml")])
    assert e.value.code == 2 and "file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["space", "nosuchaction"])
    assert e.value.code == 2
