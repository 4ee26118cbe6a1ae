"""Per-unit lookup tables: layout mirror, space enumeration, calibration (resume), prediction,
validation and the mismatch errors. Timings are not asserted."""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from archsearch.cli import main
from archsearch.latency import LatencyModel, TimingPolicy, get_backend
from archsearch.latency.table import LatencyTable, calibrate, validate
from archsearch.latency.units import build_unit, enumerate_units, key_of, units_of
from archsearch.space import SearchSpace
from snapgen.decoder import DecoderSpec, TinyDecoder
from snapgen.errors import UserError
from snapgen.plan import plan
from snapgen.presets import load_preset
from snapgen.spec import ArchSpec
from snapgen.unet import SnapGenUNet

from conftest import TINY_UNET_SPACE

QUICK = TimingPolicy(warmup=1, min_repeats=1, max_repeats=1, min_time_s=0.0, max_time_s=1.0)
TINY_DECODER_SPACE = """\
kind: decoder
presets:
  small:
    arch: {latent_channels: 4, channels: [32, 16], blocks: [1, 1], norm: [groupnorm, none], norm_groups: 8}
search:
  base: small
  dimensions:
    channels: {per_stage: true, choices: [[32, 48], [16, 32]]}
    conv: {choices: [regular, separable]}
"""


def traced_blocks(model, inputs):
    """(signature, input shape) of every block module, from forward hooks on the built model."""
    seen = []
    hooks = [m.register_forward_pre_hook(lambda m, a: seen.append((m.signature, tuple(a[0].shape[1:]))))
             for m in model.modules() if hasattr(m, "signature")]
    with torch.no_grad():
        model(*inputs)
    for h in hooks:
        h.remove()
    return seen


def mirrored(spec, latent):
    return [(b.sig, (b.cin, b.size(latent), b.size(latent))) for b in plan(spec)
            if b.kind in ("res", "transformer", "down", "up")]


@pytest.mark.parametrize("name", ["a", "c", "e", "f"])
def test_layout_mirrors_the_built_unet(name):
    spec = load_preset(None, name).scaled(0.125, 0.5, head_dim=16, norm_groups=8)
    model = SnapGenUNet.from_spec(spec).eval()
    inputs = (torch.zeros(1, 4, 16, 16), torch.full((1,), 500.0), torch.zeros(1, 3, spec.context_dim))
    assert traced_blocks(model, inputs) == mirrored(spec, 16)


def test_layout_mirrors_sampled_unets_and_decoder(tmp_path):
    (tmp_path / "s.yaml").write_text(TINY_UNET_SPACE)
    space = SearchSpace.load(tmp_path / "s.yaml")
    for spec in space.sample_random(6, seed=3):
        spec = replace(spec, mid_block=bool(spec.stages[0].channels % 2 == 0))
        model = SnapGenUNet.from_spec(spec).eval()
        inputs = (torch.zeros(1, 4, 8, 8), torch.full((1,), 1.0), torch.zeros(1, 3, spec.context_dim))
        assert traced_blocks(model, inputs) == mirrored(spec, 8)
    dspec = DecoderSpec(channels=(32, 16, 16), blocks=(1, 0, 2), norm=("groupnorm", "none", "rmsnorm"), latent_channels=4,
                        norm_groups=8, conv="expanded_separable")
    assert traced_blocks(TinyDecoder.from_spec(dspec).eval(), (torch.zeros(1, 4, 4, 4),)) == mirrored(dspec, 4)


def test_enumeration_covers_every_sampled_architecture():
    space = SearchSpace.load("search_spaces/unet.yaml")
    keys = {key_of(u) for u in enumerate_units(space, 128)}
    for spec in space.sample_random(60, seed=11):
        assert {key_of(u) for _, u in units_of(spec, 128)} <= keys
    dspace = SearchSpace.load("search_spaces/decoder.yaml")
    dkeys = {key_of(u) for u in enumerate_units(dspace, 16)}
    for spec in dspace.sample_random(30, seed=2):
        assert {key_of(u) for _, u in units_of(spec, 16)} <= dkeys


def test_every_unit_type_runs():
    space = SearchSpace.load("search_spaces/unet.yaml")
    units = enumerate_units(space, 8)
    done = set()
    for u in units:
        kind = (u["u"], u.get("conv"), u.get("norm"), u.get("attention"), u.get("kind"))
        if kind in done:
            continue
        done.add(kind)
        m, x = build_unit(u, u.get("h", 1), u.get("w", 1))
        with torch.no_grad():
            m(*x)
    assert {k[0] for k in done} == {"conv", "normact", "resadd", "down", "up", "cat", "temb", "txio", "sa", "sdpa",
                                    "qknorm", "rope", "ca", "ffn"}


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory):
    d = tmp_path_factory.mktemp("table")
    (d / "space.yaml").write_text(TINY_UNET_SPACE)
    path = d / "table.jsonl"
    calibrate(d / "space.yaml", get_backend("torch", "cpu", threads=1), path, latent_size=8, calib_latent=4,
              context_len=4, probes=1, policy=QUICK, progress=False)
    return d, path


def test_calibrate_writes_a_portable_table_and_resumes(tiny_table):
    d, path = tiny_table
    t = LatencyTable.read(path)
    h = t.header
    assert h["backend"] == "torch" and h["device"] == "cpu" and h["threads"] == 1 and h["latent_size"] == 8
    assert h["calib_latent"] == 4 and h["space"]["kind"] == "unet" and len(h["space"]["hash"]) == 16
    space = SearchSpace.load(d / "space.yaml")
    assert set(t.entries) == {key_of(u) for u in enumerate_units(space, 8, 4)} and t.done and t.probes
    # Resume: a complete table measures nothing more.
    n_lines = len(path.read_text().splitlines())
    calibrate(space, get_backend("torch", "cpu", threads=1), path, latent_size=8, calib_latent=4, context_len=4,
              probes=1, policy=QUICK, progress=False)
    assert len(path.read_text().splitlines()) == n_lines
    # An interrupted table (cut mid-line) resumes with only the missing units.
    lines = path.read_text().splitlines()
    cut = d / "cut.jsonl"
    cut.write_text("\n".join(lines[:6]) + "\n" + lines[6][:10])
    t2 = calibrate(space, get_backend("torch", "cpu", threads=1), cut, latent_size=8, calib_latent=4, context_len=4,
                   probes=1, policy=QUICK, progress=False)
    assert set(t2.entries) == set(t.entries)


def test_predict_is_a_fast_sum_over_units(tiny_table):
    d, path = tiny_table
    space = SearchSpace.load(d / "space.yaml")
    lm = LatencyModel.from_table(path, space)
    assert lm.latent_size == 8 and lm.describe()["mode"] == "table"
    for spec in space.sample_random(5, seed=5):
        t0 = time.perf_counter()
        ms = lm.predict(spec, 8)
        assert time.perf_counter() - t0 < 1.0
        assert ms > 0 and abs(sum(lm.breakdown(spec).values()) - ms) < 1e-9
    with pytest.raises(UserError, match="calibrated for latent 8"):
        lm.predict(space.preset("tiny"), 16)


def test_lookup_on_the_shipped_space_costs_well_under_a_second(tmp_path):
    """A synthetic table (1 ms per unit) for the shipped UNet space: lookup cost only."""
    from archsearch.latency.table import FORMAT, VERSION, space_fingerprint

    space = SearchSpace.load("search_spaces/unet.yaml")
    header = {"table": FORMAT, "version": VERSION, "backend": "torch", "device": "cpu", "mode": "eager", "threads": 2,
              "dtype": "float32", "latent_size": 128, "calib_latent": 64, "context_len": 77,
              "space": space_fingerprint(space)}
    rows = [header] + [{"key": key_of(u), "ms": 1.0, "at": 64} for u in enumerate_units(space, 128)]
    p = tmp_path / "synthetic.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    lm = LatencyModel.from_table(p, space)
    specs = space.sample_random(20, seed=0)
    t0 = time.perf_counter()
    for s in specs:
        assert lm.predict(s, 128) > 0
    assert (time.perf_counter() - t0) / len(specs) < 0.1


def test_validate_reports_error_distribution(tiny_table, tmp_path, capsys):
    d, path = tiny_table
    rep = validate(d / "space.yaml", path, get_backend("torch", "cpu", threads=1), n=3, seed=0, policy=QUICK,
                   progress=False, out=tmp_path / "val.jsonl")
    assert rep.n == 3 and rep.median_abs_pct_error >= 0 and len(rep.rows) == 3
    assert all(r["measured_ms"] > 0 and r["predicted_ms"] > 0 for r in rep.rows)
    # Re-running reuses the measured architectures.
    rep2 = validate(d / "space.yaml", path, get_backend("torch", "cpu", threads=1), n=3, seed=0, policy=QUICK,
                    progress=False, out=tmp_path / "val.jsonl")
    assert [r["measured_ms"] for r in rep2.rows] == [r["measured_ms"] for r in rep.rows]
    assert len((tmp_path / "val.jsonl").read_text().splitlines()) == 3


def test_validate_cli_json(tiny_table, capsys, monkeypatch):
    import archsearch.latency.table as table_mod

    d, path = tiny_table
    monkeypatch.setattr(table_mod, "E2E_POLICY", QUICK)
    assert main(["calibrate", str(d / "space.yaml"), "--backend", "torch", "--threads", "1", "--validate", str(path),
                 "--n", "2", "--json", "--no-progress", "--context-len", "4"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["n"] == 2 and isinstance(out["median_abs_pct_error"], float)


def run_cli_error(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1, err
    return err[0]


def test_mismatched_table_one_line_exit_2(tiny_table, tmp_path, capsys):
    d, path = tiny_table
    other = tmp_path / "other.yaml"
    other.write_text(TINY_UNET_SPACE.replace("ffn_ratio: {choices: [2, 3, 4]}", "ffn_ratio: {choices: [2, 4]}"))
    line = run_cli_error(["calibrate", str(other), "--threads", "1", "--validate", str(path), "--n", "2"], capsys)
    assert "table was calibrated for the unet space" in line and "recalibrate" in line
    line = run_cli_error(["calibrate", "search_spaces/decoder.yaml", "--validate", str(path)], capsys)
    assert "not for search_spaces/decoder.yaml (decoder" in line
    line = run_cli_error(["calibrate", str(d / "space.yaml"), "--threads", "2", "--validate", str(path)], capsys)
    assert "threads=1" in line
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"hello": 1}\n')
    line = run_cli_error(["calibrate", str(d / "space.yaml"), "--validate", str(bad)], capsys)
    assert "not a latency table" in line
    line = run_cli_error(["calibrate", str(d / "space.yaml"), "--backend", "nope", "-o", str(tmp_path / "t.jsonl")], capsys)
    assert "unknown backend 'nope'" in line
    line = run_cli_error(["calibrate", str(d / "space.yaml"), "--device", "cuda", "-o", str(tmp_path / "t.jsonl")]
                         if not torch.cuda.is_available() else ["calibrate", str(d / "space.yaml")], capsys)
    assert "cuda" in line or "-o" in line
    with pytest.raises(UserError, match="recalibrate"):
        LatencyModel.from_table(path, other)


def test_decoder_space_table(tmp_path):
    (tmp_path / "d.yaml").write_text(TINY_DECODER_SPACE)
    space = SearchSpace.load(tmp_path / "d.yaml")
    t = calibrate(space, get_backend("torch", "cpu", threads=1), tmp_path / "d.jsonl", latent_size=4, calib_latent=2,
                  probes=0, policy=QUICK, progress=False)
    assert t.header["space"]["kind"] == "decoder"
    lm = LatencyModel.from_table(tmp_path / "d.jsonl", space)
    assert all(lm.predict(s) > 0 for s in space.sample_random(3, seed=0))
    with pytest.raises(UserError, match="cannot predict a unet"):
        lm.predict(load_preset(None, "a"))


def test_anchors_fix_the_ratio_prediction_is_scaled_by(tiny_table):
    from archsearch.latency.units import units_of

    d, path = tiny_table
    t = LatencyTable.read(path)
    assert len(t.anchors) == 4 and all(a["measured_ms"] > 0 for a in t.anchors.values())
    space = SearchSpace.load(d / "space.yaml")
    lm = LatencyModel.from_table(path, space)
    raw = lambda spec: sum(t.unit_ms(key_of(u), {}) for _, u in units_of(spec, 8, 4))  # noqa: E731
    # The correction is the anchors' median of measured / (sum of their units).
    ratios = [a["measured_ms"] / raw(ArchSpec.from_dict(a["spec"])) for a in t.anchors.values()]
    assert t.anchor_scale == pytest.approx(float(np.median(ratios))) and t.anchor_scale != 1.0
    spec = space.sample_random(1, seed=7)[0]
    assert lm.predict(spec) == pytest.approx(raw(spec) * t.anchor_scale)
    # Without anchors (or an interrupted table whose anchors miss units) the sum is left alone.
    lines = [x for x in path.read_text().splitlines() if '"anchor"' not in x]
    bare = d / "bare.jsonl"
    bare.write_text("\n".join(lines) + "\n")
    assert LatencyTable.read(bare).anchor_scale == 1.0
    assert LatencyModel.from_table(bare).predict(spec) == pytest.approx(raw(spec))


def test_validation_reports_bias_shares_worst_and_a_scatter(tiny_table, tmp_path):
    d, path = tiny_table
    table = tmp_path / "t.jsonl"
    table.write_text(path.read_text())
    rep = validate(d / "space.yaml", table, get_backend("torch", "cpu", threads=1), n=4, seed=0, policy=QUICK,
                   progress=False)
    errs = [r["pct_error"] for r in rep.rows]
    assert rep.bias_pct == pytest.approx(np.mean(errs))
    assert rep.within_10_pct == pytest.approx(100 * np.mean(np.abs(errs) <= 10))
    assert rep.within_5_pct == pytest.approx(100 * np.mean(np.abs(errs) <= 5))
    assert [w["pct_error"] for w in rep.worst] == sorted(errs, key=lambda e: -abs(e))[:3]
    html = Path(rep.scatter).read_text()
    assert Path(rep.scatter).name == "t.validation.html" and "plotly" in html.lower() and "measured ms" in html
    # The table now carries its validation summary; the model describes it.
    v = LatencyTable.read(table).validation
    assert v["bias_pct"] == rep.bias_pct and v["within_10_pct"] == rep.within_10_pct and v["threads"] == 1
    assert LatencyModel.from_table(table).describe()["validation"]["n"] == 4
    # Validation never measures an anchor.
    anchors = set(LatencyTable.read(table).anchors)
    assert not anchors & {r["spec_key"] for r in rep.rows}


def test_a_table_refuses_another_setting_unless_allowed(tiny_table, tmp_path, capsys):
    d, path = tiny_table
    space = SearchSpace.load(d / "space.yaml")
    for setting, word in (({"threads": 2}, "threads=1"), ({"clock": "cpu"}, "clock='wall'"),
                          ({"latent_size": 16}, "latent_size=8"), ({"device": "cuda"}, "device='cpu'")):
        with pytest.raises(UserError, match=word) as e:
            LatencyModel.from_table(path, space, setting)
        assert "allow" in e.value.line() and "\n" not in e.value.line()
        LatencyModel.from_table(path, space, setting, allow_mismatch=True)
    LatencyModel.from_table(path, space, {"threads": 1, "clock": None, "latent_size": 8})
    # validate at another thread count: refused; allowed, it measures but records nothing in the table
    with pytest.raises(UserError, match="threads=1"):
        validate(space, path, get_backend("torch", "cpu", threads=2), n=2, policy=QUICK, progress=False)
    before = path.read_text()
    rep = validate(space, path, get_backend("torch", "cpu", threads=2), n=2, policy=QUICK, progress=False,
                   allow_mismatch=True)
    assert rep.threads == 2 and rep.scatter is None and path.read_text() == before
    line = run_cli_error(["calibrate", str(d / "space.yaml"), "--threads", "2", "--clock", "cpu", "--validate",
                          str(path)], capsys)
    assert "threads=1" in line and "clock='wall'" in line


def test_study_latency_setting_must_match_the_table(tiny_table):
    from archsearch.objectives.latency import check_table
    from archsearch.study.schema import LatencyCfg, TargetCfg

    d, path = tiny_table
    space = SearchSpace.load(d / "space.yaml")
    target = TargetCfg(latent_size=8, context_len=4)
    check_table(LatencyCfg(mode="table", path=str(path), threads=1), target, space, file="s.yaml")
    with pytest.raises(UserError, match="threads=1, not 2") as e:
        check_table(LatencyCfg(mode="table", path=str(path), threads=2), target, space, file="s.yaml")
    assert e.value.key == "latency.path"
    with pytest.raises(UserError, match="latent_size=8, not 16"):
        check_table(LatencyCfg(mode="table", path=str(path)), TargetCfg(latent_size=16, context_len=4), space,
                    file="s.yaml")
    check_table(LatencyCfg(mode="table", path=str(path), threads=2, allow_mismatch=True), target, space,
                file="s.yaml")


def test_half_precision_tables_use_the_same_method(tmp_path):
    """What a CUDA fp16/bf16 table runs, on the CPU: units and anchors in bf16, validated the same way;
    a float32 setting refuses the table."""
    (tmp_path / "space.yaml").write_text(TINY_UNET_SPACE)
    be = get_backend("torch", "cpu", threads=1, dtype="bfloat16")
    t = calibrate(tmp_path / "space.yaml", be, tmp_path / "bf16.jsonl", latent_size=8, context_len=4, anchors=2,
                  policy=QUICK, progress=False)
    assert t.header["dtype"] == "bfloat16" and t.header["calib_latent"] == 8 and len(t.anchors) == 2
    rep = validate(tmp_path / "space.yaml", t.path, be, n=2, policy=QUICK, progress=False)
    assert rep.dtype == "bfloat16" and rep.n == 2 and rep.scatter
    with pytest.raises(UserError, match="dtype='bfloat16', not 'float32'"):
        validate(tmp_path / "space.yaml", t.path, get_backend("torch", "cpu", threads=1), n=2, policy=QUICK,
                 progress=False)


def test_e2e_validation_is_steps_times_unet_plus_decoder(tiny_table, tmp_path):
    d, path = tiny_table
    (tmp_path / "d.yaml").write_text(TINY_DECODER_SPACE)
    be = get_backend("torch", "cpu", threads=1)
    dec = calibrate(tmp_path / "d.yaml", be, tmp_path / "d.jsonl", latent_size=8, anchors=1, policy=QUICK,
                    progress=False)
    rep = validate(d / "space.yaml", path, be, n=3, policy=QUICK, progress=False, record=False, partner=dec.path,
                   steps=4, partner_preset="small", partner_space=tmp_path / "d.yaml")
    e = rep.e2e
    assert e["steps"] == 4 and e["partner_preset"] == "small" and e["partner_measured_ms"] > 0
    want = [(4 * r["predicted_ms"] + e["partner_predicted_ms"] - 4 * r["measured_ms"] - e["partner_measured_ms"])
            / (4 * r["measured_ms"] + e["partner_measured_ms"]) * 100 for r in rep.rows]
    assert e["bias_pct"] == pytest.approx(np.mean(want)) and "within_10_pct" in e
    with pytest.raises(UserError, match="calibrated for the unet space"):  # a UNet table is no decoder partner
        validate(d / "space.yaml", path, be, n=1, policy=QUICK, progress=False, record=False, partner=path,
                 partner_preset="small", partner_space=tmp_path / "d.yaml")


def test_units_are_timed_in_the_layout_their_network_runs(tmp_path):
    """The tiny decoder runs channels-last: its units are timed channels-last (alone in NCHW, a
    separable conv pays two layout conversions the network never does); UNet units stay NCHW."""
    seen = {}
    for kind, text in (("decoder", TINY_DECODER_SPACE), ("unet", TINY_UNET_SPACE)):
        (tmp_path / f"{kind}.yaml").write_text(text)
        be = get_backend("torch", "cpu", threads=1)
        prepare = be.prepare
        layouts = []

        def spy(module, inputs, names=None, _layouts=layouts, _prepare=prepare):
            if names is None:  # a unit (whole networks come with input names)
                _layouts += [x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
                             for x in inputs if x is not None and x.dim() == 4 and x.shape[-1] > 1]
            return _prepare(module, inputs, names)

        be.prepare = spy
        calibrate(tmp_path / f"{kind}.yaml", be, tmp_path / f"{kind}.jsonl", latent_size=4 if kind == "decoder" else 8,
                  context_len=4, anchors=0, policy=QUICK, progress=False)
        seen[kind] = set(layouts)
    assert seen == {"decoder": {True}, "unet": {False}}
