"""Latency measurement: the timing method, backends, ``archsearch latency`` (behaviour, not timings)."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from archsearch.cli import main
from archsearch.latency import LatencyModel, TimingPolicy, get_backend, measure_latency, time_callable
from snapgen.errors import UserError
from snapgen.presets import load_decoder_preset, load_preset

QUICK = ["--max-repeats", "2", "--max-time", "1"]


def small_unet(name="f"):
    return load_preset(None, name).scaled(0.125, 0.5, head_dim=16, norm_groups=8)


def test_timing_repeats_until_stable_and_caps():
    calls = []
    t = time_callable(lambda: calls.append(1), TimingPolicy(min_repeats=3, max_repeats=5, min_time_s=0.0))
    assert 3 <= t.repeats <= 5 and t.number >= 1
    assert t.p10_ms <= t.median_ms <= t.p90_ms and t.iqr_ms >= 0
    assert len(calls) == (t.repeats * t.number) + 1  # + the warm-up call

    # A callable that never settles stops at the cap, flagged unstable.
    import itertools
    import time

    waits = itertools.cycle([0.001, 0.004])
    t = time_callable(lambda: time.sleep(next(waits)), TimingPolicy(min_repeats=3, max_repeats=6, min_time_s=0.0,
                                                                     rel_tol=1e-9, rel_iqr=1e-9, min_sample_s=0.0))
    assert t.repeats == 6 and not t.stable


def test_threads_fixed_and_restored():
    before = torch.get_num_threads()
    res = measure_latency(small_unet(), "torch", "cpu", 8, context_len=4, threads=1, policy=TimingPolicy.quick())
    assert res.threads == 1 and torch.get_num_threads() == before
    assert res.timed and res.median_ms > 0 and res.batch == 1 and res.repeats >= 2
    assert set(res.per_stage_ms) >= {"io", "stage0", "stage1", "stage2", "mid"}


def test_latency_cli_json_unet_spec_file(tmp_path, capsys):
    p = tmp_path / "arch.yaml"
    p.write_text(small_unet().to_yaml())
    assert main(["latency", str(p), "--backend", "torch", "--device", "cpu", "--latent-size", "8", "--context-len",
                 "4", "--json", *QUICK]) == 0
    d = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert isinstance(d["median_ms"], float) and d["backend"] == "torch" and d["device"] == "cpu"
    assert d["latent_size"] == 8 and d["threads"] >= 1 and d["kind"] == "unet"


def test_latency_cli_decoder_preset_text(capsys):
    assert main(["latency", "--space", "search_spaces/decoder.yaml", "--preset", "tiny", "--latent-size", "2",
                 *QUICK]) == 0
    out = capsys.readouterr().out
    assert "decoder tiny" in out and "median" in out and "stage3" in out


def test_latency_preset_found_in_decoder_space_without_space(capsys):
    assert main(["latency", "--preset", "tiny", "--latent-size", "2", "--json", "--no-breakdown", *QUICK]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "decoder"


@pytest.mark.parametrize("argv, key", [
    (["--preset", "a", "--backend", "onnx"], "--backend: unknown backend 'onnx'; allowed: torch, coreml"),
    (["--preset", "a", "--device", "tpu"], "--device: unknown torch device 'tpu'"),
    (["--preset", "a", "--backend", "coreml", "--device", "gpu"], "--device: unknown Core ML compute unit 'gpu'"),
    (["--preset", "nope"], "--preset: unknown preset 'nope'"),
    (["--preset", "a", "--latent-size", "30"], "--latent-size: must be divisible by 4"),
    ([], "SPEC: name an architecture"),
])
def test_latency_cli_bad_input_one_line_exit_2(argv, key, capsys):
    with pytest.raises(SystemExit) as e:
        main(["latency", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and key in err[0] and "Traceback" not in err[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_absent_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["latency", "--preset", "a", "--backend", "torch", "--device", "cuda"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cuda" in err[0] and "not available" in err[0]
    with pytest.raises(UserError):
        LatencyModel.measuring("torch", "cuda")


@pytest.mark.skipif(sys.platform == "darwin", reason="on macOS Core ML predictions are timed")
def test_coreml_backend_converts_but_does_not_time_on_linux(capsys):
    res = measure_latency(load_decoder_preset(None, "tiny"), "coreml", "cpu_and_ne", 2, policy=TimingPolicy.quick())
    assert not res.timed and res.median_ms is None and "not timed" in res.note and "macOS" in res.note
    assert res.backend == "coreml" and res.device == "cpu_and_ne"
    with pytest.raises(UserError, match="cannot time"):
        LatencyModel.measuring("coreml")
    assert not get_backend("coreml").can_time


def test_measuring_model_predicts_ms():
    lm = LatencyModel.measuring("torch", "cpu", context_len=4, policy=TimingPolicy.quick())
    assert lm.predict(small_unet(), 8) > 0
    assert lm.describe()["mode"] == "measure"


def test_channels_last_tiny_decoder_keeps_its_outputs():
    """The tiny decoder runs channels-last (2x faster separable convs on a CPU); its image equals the
    NCHW computation to fp32 tolerance and comes back NCHW."""
    import torch.nn.functional as F

    from snapgen.decoder import DecoderSpec, TinyDecoder

    torch.manual_seed(0)
    for conv in ("separable", "expanded_separable", "regular"):
        spec = DecoderSpec(channels=(64, 32, 32), blocks=(2, 1, 1), norm=("groupnorm", "none", "none"),
                           latent_channels=4, norm_groups=8, conv=conv)
        dec = TinyDecoder.from_spec(spec).eval()
        z = torch.randn(1, 4, 6, 6)
        with torch.no_grad():
            h = dec.conv_in(z)  # the NCHW computation, module by module
            for stage in dec.stages:
                h = stage(h)
            want = dec.conv_out(F.silu(dec.norm_out(h)))
            assert want.is_contiguous()
            got = dec(z)
        assert got.is_contiguous() and got.shape == (1, 3, 24, 24)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
