"""ArchSpec round trips, the block registry, every value of every search dimension, and
one-line errors for bad spaces and specs."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch

from archsearch.space import InvalidArchitecture, SearchSpace
from snapgen.blocks import Attention
from snapgen.blocks.registry import FIELD_REGISTRY
from snapgen.errors import UserError
from snapgen.blocks.rope import apply_rope, rope_2d_tables
from snapgen.presets import DEFAULT_DECODER_SPACE, DEFAULT_UNET_SPACE, load_preset
from snapgen.spec import STAGE_FIELDS, ArchSpec
from snapgen.unet import SnapGenUNet

ROOT = Path(__file__).resolve().parent.parent
UNET_PRESETS = ["a", "b", "c", "d", "e", "f", "snapgen-imagenet", "snapgen-t2i"]


@pytest.mark.parametrize("name", UNET_PRESETS)
def test_spec_round_trips_exactly(name):
    spec = load_preset(None, name)
    assert ArchSpec.from_json(spec.to_json()) == spec
    assert ArchSpec.from_yaml(spec.to_yaml()) == spec
    assert ArchSpec.from_dict(json.loads(json.dumps(spec.to_dict()))).to_dict() == spec.to_dict()


def test_ladder_is_cumulative():
    a, b, e, f = (load_preset(None, n) for n in "abef")
    assert [s.self_attention for s in b.stages] == [False, False, True]
    assert all(s.attention == "mqa" for s in e.stages) and not e.stages[0].res_block
    assert e.stages[0].cross_attention and not e.stages[0].self_attention
    assert all(s.qk_norm == "rmsnorm" and s.pos_embed == "rope2d" for s in f.stages)
    assert dataclasses.replace(f, name="e", stages=tuple(
        dataclasses.replace(s, qk_norm="none", pos_embed="none") for s in f.stages)) == e
    assert a.stages[2].attention == "mhsa"


def _tiny(spec: ArchSpec, keep_depth: bool = False) -> ArchSpec:
    """Narrowest width, one layer per stage, transformer depth at most 1 (unless it is the
    dimension under test)."""
    spec = spec.scaled(0.0, 1.0, head_dim=16, norm_groups=4)
    stages = tuple(dataclasses.replace(s, layers=1, transformer_depth=s.transformer_depth if keep_depth
                                       else min(s.transformer_depth, 1)) for s in spec.stages)
    return dataclasses.replace(spec, stages=stages, context_dim=24)


def _forward_backward_trace(spec: ArchSpec):
    torch.manual_seed(0)
    model = SnapGenUNet.from_spec(spec)
    x = torch.randn(2, spec.latent_channels, 8, 8)
    t = torch.tensor([10.0, 900.0])
    ctx = torch.randn(2, 5, spec.context_dim)
    out = model(x, t, ctx).sample
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    model.eval()
    traced = torch.jit.trace(model, (x[:1], t[:1], ctx[:1]), check_trace=False, strict=False)  # a dict output
    assert traced(x[1:], t[1:], ctx[1:])["sample"].shape == x[1:].shape


def _dimension_values():
    space = SearchSpace.load(DEFAULT_UNET_SPACE)
    for dim in space.dimensions:
        values = dim.choices if dim.choices is not None else (dim.low, dim.high)
        if values and isinstance(values[0], tuple):
            for i, per_stage in enumerate(values):
                for v in per_stage:
                    yield dim.name, i, v
        else:
            for v in values:
                yield dim.name, None, v


@pytest.mark.parametrize("field,stage,value", list(_dimension_values()))
def test_every_dimension_value_builds_runs_and_traces(field, stage, value):
    space = SearchSpace.load(DEFAULT_UNET_SPACE)
    arch = space.base_dict()
    n = space.num_stages
    if field == "kv_heads" or value == "gqa":
        arch["attention"] = "gqa"
        arch["kv_heads"] = 1  # valid at every width; the tested value is set at 4 heads below
    if field == "conv_expansion":
        arch["conv"] = "expanded_separable"
    if field == "res_block" and value is False:
        arch["transformer_depth"] = [1 if i == stage else d for i, d in enumerate(arch["transformer_depth"])]
    if field == "transformer_depth" and value == 0:
        arch["res_block"] = [True] * n
    if field == "kv_heads":
        pass  # set after scaling (needs a width with several heads)
    elif stage is None:
        arch[field] = value
    else:
        cur = arch.get(field)
        vals = list(cur) if isinstance(cur, list) else [cur] * n
        vals[stage] = value
        arch[field] = vals
    spec = ArchSpec.from_dict(arch)
    tiny = _tiny(spec, keep_depth=field == "transformer_depth")
    if field == "kv_heads" or value == "gqa":  # keep heads divisible at the tiny width: 64 channels / 16 = 4 heads
        kv = value if field == "kv_heads" else 2
        tiny = dataclasses.replace(tiny, stages=tuple(dataclasses.replace(s, channels=64, kv_heads=kv)
                                                      for s in tiny.stages))
    _forward_backward_trace(tiny.validate())


def test_registries_are_the_allowed_values():
    """Validation reads the registries: every registered name of a field validates, others are
    refused with the registry's list."""
    base = load_preset(None, "f")
    for field, reg in FIELD_REGISTRY.items():
        if field in ("norm_out",):
            continue  # a decoder field
        for name in reg.names():
            stages = tuple(dataclasses.replace(s, **{field: name}) for s in base.stages) if field in STAGE_FIELDS else None
            spec = dataclasses.replace(base, **({"stages": stages} if stages else {field: name}))
            if field == "attention" and name == "gqa":
                spec = dataclasses.replace(spec, stages=tuple(dataclasses.replace(s, kv_heads=2) for s in spec.stages))
            spec.validate()
        bad = dataclasses.replace(base, stages=tuple(dataclasses.replace(s, **{field: "nope"}) for s in base.stages)) \
            if field in STAGE_FIELDS else dataclasses.replace(base, **{field: "nope"})
        with pytest.raises(UserError, match=f"unknown {reg.kind} 'nope'; allowed: {', '.join(reg.names())}$"):
            bad.validate()


def test_mqa_and_gqa_share_key_value_heads():
    mhsa, mqa, gqa = (Attention(256, 64, kind=k, kv_heads=2) for k in ("mhsa", "mqa", "gqa"))
    assert mhsa.to_k.out_features == 256 and mqa.to_k.out_features == 64 and gqa.to_k.out_features == 128
    x = torch.randn(1, 16, 256)
    assert mqa(x, hw=(4, 4)).shape == x.shape


def test_rope2d_makes_scores_depend_on_relative_position_only():
    cos, sin = rope_2d_tables(6, 6, 16)
    torch.manual_seed(0)
    q, k = torch.randn(16), torch.randn(16)

    def score(pq, pk):
        iq, ik = pq[0] * 6 + pq[1], pk[0] * 6 + pk[1]
        qr = apply_rope(q[None, None, None], cos[iq], sin[iq])
        kr = apply_rope(k[None, None, None], cos[ik], sin[ik])
        return (qr * kr).sum().item()

    assert score((1, 2), (3, 1)) == pytest.approx(score((2, 3), (4, 2)), abs=1e-5)
    assert score((1, 2), (3, 1)) != pytest.approx(score((1, 2), (1, 3)), abs=1e-3)


def test_save_and_load_pretrained_round_trip(tmp_path):
    spec = _tiny(load_preset(None, "f"))
    model = SnapGenUNet.from_spec(spec)
    model.save_pretrained(tmp_path / "unet")
    again = SnapGenUNet.from_pretrained(tmp_path / "unet")
    assert again.spec == spec
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def _shipped_proxies():
    """Each shipped study's space and the function it trains a sample's proxy with (through
    snapgen.proxy.proxy_spec / the decoder's proxy: the quality metric's own)."""
    from archsearch.objectives import METRICS
    from archsearch.study.schema import load_study

    for f in ("studies/unet.yaml", "studies/decoder.yaml"):
        st = load_study(ROOT / f)
        metric = METRICS[next(n for n in st.needed_metrics() if METRICS[n].kind == "quality")]
        yield f, st.space, metric.proxy(metric.config(st.cfg, f, False))


@pytest.mark.parametrize("f,space,proxy", list(_shipped_proxies()), ids=["unet", "decoder"])
def test_shipped_spaces_never_sample_an_invalid_architecture(f, space, proxy):
    """1000 random draws: each builds at full size and at proxy size (issue 13: 803 of 2000 did not)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    kinds = set()
    for _ in range(1000):
        trial = study.ask()
        spec = space.sample(trial, proxy)  # raises InvalidArchitecture on an invalid one
        proxy(spec.validate())
        if space.kind == "unet":
            kinds.add(spec.stages[-1].attention)
            p = trial.params
            assert ("conv_expansion" in p) == (p["conv"] == "expanded_separable")
            if spec.stages[0].transformer_depth == 0:
                assert spec.stages[0].res_block
        else:
            assert list(spec.channels) == sorted(spec.channels, reverse=True)  # the constraint, never violated
        study.tell(trial, 0.0)
    assert space.kind == "decoder" or kinds == {"mhsa", "mqa", "gqa"}  # gqa is still offered where it fits


def test_a_user_space_that_cannot_be_built_says_why(tmp_path):
    text = GOOD.split("\nsearch:")[0] + """
search:
  base: snapgen-t2i
  dimensions:
    res_block: {per_stage: true, choices: [[false], [true], [true]]}
    transformer_depth: {per_stage: true, choices: [[0], [1], [2]]}
"""
    space = SearchSpace.load(_space_with(tmp_path, text))
    with pytest.raises(InvalidArchitecture, match="a stage without residual blocks needs transformer_depth >= 1"):
        space.sample(optuna.trial.FixedTrial({}))


def test_decoder_space_samples_valid_tiny_decoders():
    space = SearchSpace.load(DEFAULT_DECODER_SPACE)
    specs = space.sample_random(5, seed=0)
    assert len(specs) == 5
    assert all(list(s.channels) == sorted(s.channels, reverse=True) for s in specs)


# ---- one clear line, exit 2 -----------------------------------------------------------------

def _cli(*args):
    return subprocess.run([sys.executable, "-m", "archsearch.cli", *args], capture_output=True, text=True, cwd=ROOT)


def _space_with(tmp_path, text: str) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(text)
    return p


GOOD = (ROOT / "search_spaces" / "unet.yaml").read_text()


@pytest.mark.parametrize("mutate,expect", [
    (lambda s: s.replace("kind: unet", "kind: unet\n  bad: [", 1), "YAML syntax error"),
    (lambda s: s.replace("conv: regular", "conv: dilated", 1), "unknown conv 'dilated'; allowed: regular, separable"),
    (lambda s: s.replace("[regular, separable, expanded_separable]}", "[regular, dilated]}", 1),
     "search.dimensions.conv.choices: unknown conv 'dilated'; allowed: regular"),
    (lambda s: s.replace("channels: [256, 512, 896]", "channels: [256, 544, 896]", 1), "not divisible by head_dim"),
    (lambda s: s.replace("transformer_depth: [0, 2, 4]", "transformer_depth: [0, -2, 4]", 1), "must be >= 0"),
    (lambda s: s.replace("layers: 2", "layers: 2\n      layerz: 3", 1), "unknown key 'layerz'"),
])
def test_bad_space_gives_one_line_and_exit_2(tmp_path, mutate, expect):
    path = _space_with(tmp_path, mutate(GOOD))
    r = _cli("cost", str(path), "--preset", "a", "--latent-size", "16")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert str(path) in lines[0] and expect in lines[0], lines[0]


def test_unknown_preset_and_bad_spec_file(tmp_path):
    r = _cli("cost", str(ROOT / "search_spaces" / "unet.yaml"), "--preset", "zz")
    assert r.returncode == 2 and "unknown preset 'zz'; allowed: a, b" in r.stderr and len(r.stderr.splitlines()) == 1
    spec = tmp_path / "spec.yaml"
    spec.write_text("channels: [64, 128]\ntransformer_depth: [0, 1]\nattention: flash\n")
    r = _cli("cost", str(spec))
    assert r.returncode == 2 and "stages[0].attention" in r.stderr and "allowed: mhsa, mqa, gqa" in r.stderr
    r = _cli("cost", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "file not found" in r.stderr


def test_cost_cli_json_and_spec_file(tmp_path):
    spec = _tiny(load_preset(None, "f"))
    p = tmp_path / "tiny.yaml"
    p.write_text(spec.to_yaml())
    r = _cli("cost", str(p), "--latent-size", "16", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert isinstance(d["params"], int) and d["latent_size"] == 16
    assert 0 < d["gflops_attention"] < d["gflops"]
    assert sum(v["gflops"] for v in d["per_stage"].values()) == pytest.approx(d["gflops"])
