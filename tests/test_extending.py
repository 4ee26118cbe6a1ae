"""The worked examples of docs/extending.md are real: a spec using each new option (the FFN
activation ``silu``, the conv type ``inverted_bottleneck``) is built, costed with fvcore and timed
through the latency units, and a space offering them loads and samples them."""
from __future__ import annotations

import dataclasses

import optuna
import pytest
import torch

from archsearch.cost import cost_of, num_params
from archsearch.latency import LatencyModel, TimingPolicy, get_backend
from archsearch.latency.table import calibrate
from archsearch.latency.units import build_unit, units_of
from archsearch.space import SearchSpace
from snapgen.blocks import ACTIVATION, CONV
from snapgen.presets import load_preset
from snapgen.unet import SnapGenUNet

from conftest import TINY_UNET_SPACE


def _spec(**stage):
    base = load_preset(None, "f").scaled(0.125, 0.5, head_dim=16, norm_groups=8)
    return dataclasses.replace(base, stages=tuple(dataclasses.replace(s, **stage) for s in base.stages),
                               context_dim=32).validate()


@pytest.mark.parametrize("option", [dict(ffn_activation="silu"), dict(conv="inverted_bottleneck", conv_expansion=3)])
def test_new_option_builds_costs_and_times(option):
    spec, ref = _spec(**option), _spec()
    model = SnapGenUNet.from_spec(spec).eval()
    x, t, ctx = torch.randn(1, 4, 16, 16), torch.full((1,), 500.0), torch.randn(1, 3, 32)
    with torch.no_grad():
        out = model(x, t, ctx, return_dict=False)[0]
        other = SnapGenUNet.from_spec(ref).eval()
        other.load_state_dict(model.state_dict()) if "ffn_activation" in option else None
        assert out.shape == x.shape and torch.isfinite(out).all()
        if "ffn_activation" in option:  # same weights, another activation: another output
            assert not torch.allclose(out, other(x, t, ctx, return_dict=False)[0])
    rep = cost_of(spec, 16, 3)
    assert rep.params == num_params(model) and rep.gflops > 0
    assert sum(v["params"] for v in rep.per_stage.values()) == rep.params
    if "conv" in option:  # 1x1 in, depthwise, 1x1 out at 3x the output width: not the expanded-separable count
        assert rep.params != cost_of(_spec(conv="expanded_separable", conv_expansion=3), 16, 3).params
    units = [u for _, u in units_of(spec, 16, 3)]
    if "ffn_activation" in option:
        assert {u.get("act") for u in units if u["u"] == "ffn"} == {"silu"}
        assert all("act" not in u for _, u in units_of(ref, 16, 3))  # old keys unchanged at the default
    else:
        convs = [u for u in units if u["u"] == "conv" and u["conv"] == "inverted_bottleneck"]
        assert convs and all(u["exp"] == 3.0 for u in convs)
    for u in {str(sorted(u.items())): u for u in units}.values():  # every unit of the spec runs
        m, inputs = build_unit(u, u.get("h", 4), u.get("w", 4))
        with torch.no_grad():
            m.eval()(*inputs)


def test_registering_makes_a_name_valid_in_spec_and_space_and_timed(tmp_path):
    """A space offering both: it loads, samples them, and a lookup table calibrated for it times them."""
    assert "silu" in ACTIVATION.names() and CONV.meta("inverted_bottleneck") == {"expansion": True}
    text = TINY_UNET_SPACE.replace("conv: {choices: [regular, separable, expanded_separable]}",
                                   "conv: {choices: [regular, inverted_bottleneck]}\n"
                                   "    ffn_activation: {choices: [gelu, silu], when: has_attention}")
    (tmp_path / "s.yaml").write_text(text)
    space = SearchSpace.load(tmp_path / "s.yaml")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        spec = space.sample(trial)
        seen |= {(s.conv, s.ffn_activation) for s in spec.stages}
        study.tell(trial, 0.0)
    assert {c for c, _ in seen} == {"regular", "inverted_bottleneck"} and {a for _, a in seen} == {"gelu", "silu"}
    quick = TimingPolicy(warmup=0, min_repeats=1, max_repeats=1, min_time_s=0.0, max_time_s=1.0)
    calibrate(space, get_backend("torch", "cpu", threads=1), tmp_path / "t.jsonl", latent_size=8, calib_latent=4,
              context_len=4, policy=quick, progress=False)
    lm = LatencyModel.from_table(tmp_path / "t.jsonl", space)
    spec = space.sample(optuna.trial.FixedTrial({"conv": "inverted_bottleneck", "stage0.channels": 16,
                                                 "stage1.channels": 32, "stage0.transformer_depth": 1,
                                                 "stage1.transformer_depth": 1, "ffn_ratio": 2,
                                                 "attention": "mqa", "ffn_activation": "silu"}))
    assert spec.stages[0].conv == "inverted_bottleneck" and spec.stages[1].ffn_activation == "silu"
    by = lm.breakdown(spec)
    assert by["ffn"] > 0 and by["conv"] > 0
