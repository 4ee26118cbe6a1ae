"""Core ML export: every block type of the space converts (on Linux too), the split-einsum
attention layout matches PyTorch, and exported packages load back with the right shapes."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

ct = pytest.importorskip("coremltools")

from snapgen.blocks import Downsample, ResBlock, SpatialTransformer, Upsample  # noqa: E402
from snapgen.cli import main  # noqa: E402
from snapgen.decoder import DecoderSpec, TinyDecoder  # noqa: E402
from snapgen.export.ane import ane_layout, freeze_rope  # noqa: E402
from snapgen.export.coreml import convert_module, io_shapes  # noqa: E402
from snapgen.presets import load_preset  # noqa: E402
from snapgen.unet import SnapGenUNet  # noqa: E402


def _convert(module, inputs, names):
    ml = convert_module(module.eval(), inputs, names, ["y"])
    spec = ml.get_spec()
    assert spec.WhichOneof("Type") == "mlProgram"
    return ml


@pytest.mark.parametrize("conv, norm", [("regular", "groupnorm"), ("separable", "layernorm"),
                                        ("expanded_separable", "rmsnorm"), ("expanded_separable", "none")])
def test_resblock_converts(conv, norm):
    m = ResBlock(16, 32, temb_dim=8, conv=conv, expansion=1.5, norm=norm, norm_groups=8)
    _convert(_ResWrap(m), (torch.randn(1, 16, 8, 8), torch.randn(1, 8)), ["x", "temb"])


class _ResWrap(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x, temb):
        return self.m(x, None, temb)


@pytest.mark.parametrize("conv", ["regular", "separable", "expanded_separable"])
def test_resampling_converts(conv):
    m = torch.nn.Sequential(Downsample(16, conv=conv), Upsample(16, 24, conv=conv))
    _convert(m, (torch.randn(1, 16, 8, 8),), ["x"])


TRANSFORMER_CASES = [  # every attention kind, QK norm and position embedding, both layouts
    dict(attention="mhsa", qk_norm="none", pos_embed="none", norm="groupnorm", layout="split_einsum"),
    dict(attention="mqa", qk_norm="rmsnorm", pos_embed="rope2d", norm="rmsnorm", layout="split_einsum"),
    dict(attention="gqa", qk_norm="layernorm", pos_embed="rope2d", norm="layernorm", layout="split_einsum"),
    dict(attention="gqa", qk_norm="rmsnorm", pos_embed="rope2d", norm="none", layout="original"),
]


def _transformer(c):
    return SpatialTransformer(24, 32, 1, norm=c["norm"], norm_groups=8, head_dim=8, context_dim=12,
                              self_attention=True, cross_attention=True, ffn_ratio=3, ffn_gated=c["norm"] != "none",
                              attention=c["attention"], kv_heads=2, qk_norm=c["qk_norm"],
                              pos_embed=c["pos_embed"]).eval()


@pytest.mark.parametrize("case", TRANSFORMER_CASES, ids=lambda c: "-".join(c.values()))
def test_transformer_converts(case):
    st = _transformer(case)
    inputs = (torch.randn(1, 24, 4, 4), torch.randn(1, 5, 12))
    m = ane_layout(st, inputs) if case["layout"] == "split_einsum" else freeze_rope(st, inputs)
    with torch.no_grad():
        assert torch.allclose(m(*inputs), st(*inputs), atol=1e-5)
    _convert(m, inputs, ["x", "context"])


@pytest.mark.parametrize("name, att", [("a", "mhsa"), ("f", "mqa"), ("f", "gqa")])
def test_split_einsum_layout_matches_pytorch_on_unets(name, att):
    spec = load_preset(None, name).scaled(0.125, 0.5, head_dim=8, norm_groups=8)
    if True:
        s = replace(spec, stages=tuple(replace(st, attention=att, kv_heads=2) for st in spec.stages)).validate()
        unet = SnapGenUNet.from_spec(s).eval()
        inputs = (torch.randn(1, 4, 8, 8), torch.full((1,), 300.0), torch.randn(1, 6, s.context_dim))
        ane = ane_layout(unet, inputs)
        assert sum(type(m).__name__ == "ANESpatialTransformer" for m in ane.modules()) > 0
        with torch.no_grad():
            assert torch.allclose(ane(*inputs).sample, unet(*inputs).sample, atol=1e-4)


def _small_checkpoint(tmp_path):
    """Two stages with (e)-(f)'s options: CA-only first stage, MQA, QK RMSNorm, RoPE, expanded separable convs."""
    from snapgen.spec import ArchSpec

    spec = ArchSpec.from_dict(dict(name="small", latent_channels=16, context_dim=32, head_dim=16, norm_groups=8,
                                   channels=[16, 32], layers=1, res_block=[False, True], transformer_depth=[1, 1],
                                   self_attention=[False, True], cross_attention=True, attention="mqa",
                                   qk_norm="rmsnorm", pos_embed="rope2d", conv="expanded_separable", ffn_ratio=3,
                                   sampling_conv="separable"))
    ckpt = tmp_path / "ckpt"
    SnapGenUNet.from_spec(spec).save_pretrained(ckpt)
    dec = DecoderSpec(channels=(32, 16), blocks=(1, 1), norm=("groupnorm", "none"), latent_channels=16, norm_groups=8)
    TinyDecoder.from_spec(dec).save_pretrained(ckpt / "decoder")
    return ckpt, spec


def test_export_small_unet_loads_back(tmp_path):
    """One stage with self- and cross-attention (MQA, QK RMSNorm, RoPE) in the split-einsum layout."""
    from snapgen.export.coreml import export_unet
    from snapgen.spec import ArchSpec

    spec = ArchSpec.from_dict(dict(name="one", latent_channels=16, context_dim=8, head_dim=8, norm_groups=8,
                                   channels=[16], layers=1, transformer_depth=1, attention="mqa", qk_norm="rmsnorm",
                                   pos_embed="rope2d", conv="separable", mid_block=False))
    p = export_unet(SnapGenUNet.from_spec(spec), tmp_path / "u.mlpackage", latent_size=4, context_len=3)
    assert ct.models.MLModel(str(p), skip_model_load=True).get_spec().WhichOneof("Type") == "mlProgram"
    assert io_shapes(p) == {"inputs": {"sample": [1, 16, 4, 4], "timestep": [1], "encoder_hidden_states": [1, 3, 8]},
                            "outputs": {"velocity": [1, 16, 4, 4]}}


@pytest.mark.slow
def test_export_checkpoint_unet_and_decoder_load_back(tmp_path, capsys):
    ckpt, spec = _small_checkpoint(tmp_path)
    out = tmp_path / "out"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "coreml", "-o", str(out), "--latent-size", "8",
                 "--context-len", "6", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary["files"]) == {"unet", "decoder"}
    unet_pkg, dec_pkg = out / "unet.mlpackage", out / "decoder.mlpackage"
    for pkg in (unet_pkg, dec_pkg):
        ml = ct.models.MLModel(str(pkg), skip_model_load=True)  # loads on Linux; predicting needs macOS
        assert ml.get_spec().WhichOneof("Type") == "mlProgram"
    assert io_shapes(unet_pkg) == {
        "inputs": {"sample": [1, 16, 8, 8], "timestep": [1], "encoder_hidden_states": [1, 6, 32]},
        "outputs": {"velocity": [1, 16, 8, 8]}}
    assert io_shapes(dec_pkg) == {"inputs": {"latent": [1, 16, 8, 8]}, "outputs": {"image": [1, 3, 16, 16]}}
    meta = ct.models.MLModel(str(unet_pkg), skip_model_load=True).user_defined_metadata
    assert json.loads(meta["snapgen.arch"])["stages"][0]["channels"] == spec.stages[0].channels
    assert meta["snapgen.attention_layout"] == "split_einsum"


def test_export_tiny_decoder_palettized(tmp_path):
    from snapgen.export.coreml import export_decoder

    dec = TinyDecoder.from_spec(DecoderSpec(channels=(32, 16), blocks=(1, 1), norm=("groupnorm", "none"),
                                            latent_channels=16, norm_groups=8, conv="expanded_separable")).eval()
    p = export_decoder(dec, tmp_path / "d.mlpackage", latent_channels=16, latent_size=4, palettize_bits=4)
    assert io_shapes(p)["outputs"] == {"image": [1, 3, 8, 8]}


@pytest.mark.parametrize("argv, text", [
    (["--preset", "a", "--format", "onnx"], "--format: unknown format 'onnx'"),
    (["--preset", "a"], "--decoder: decoder 'tiny' decodes 16-channel latents but UNet 'a' makes 4"),
    (["--preset", "snapgen-t2i", "--attention", "flash"], "--attention: unknown attention layout 'flash'"),
    (["--checkpoint", "/nonexistent"], "checkpoint directory not found"),
    (["--preset", "zzz"], "unknown preset 'zzz'"),
])
def test_export_bad_input_one_line_exit_2(argv, text, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["export", *argv, "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and text in err[0], err


def test_snapgen_export_never_imports_archsearch():
    code = ("import sys, snapgen.export.coreml, snapgen.export.ane, snapgen.commands.export; "
            "print(any(m == 'archsearch' or m.startswith('archsearch.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"
