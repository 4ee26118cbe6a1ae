"""A SnapGen model as a diffusers pipeline: the UNet's and decoders' diffusers interfaces, AutoModel,
SnapGenPipeline saved and loaded (also by DiffusionPipeline in a fresh process), sampling equal to
snapgen's own sampler, and (slow) a trained test-size run exported with `snapgen export --format
diffusers` giving `snapgen sample`'s image for the same seed, to the bit."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from snapgen.spec import ArchSpec, StageSpec
from snapgen.unet import SnapGenUNet, SnapGenUNetOutput

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["sneaker", "bag", "coat"]


@pytest.fixture
def one_thread():
    """torch on one CPU thread, as the proxy builds and caches its prompt embeddings (``threads: 1``):
    the text encoder's reductions round differently on two threads (1.8e-6 on an embedding, measured),
    and bit-for-bit comparisons need the same arithmetic."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _spec(context_dim=32, pooled_dim=0):
    return ArchSpec(stages=(StageSpec(32, layers=1, transformer_depth=0, cross_attention=False),
                            StageSpec(64, layers=1, transformer_depth=1)), name="t", context_dim=context_dim,
                    pooled_dim=pooled_dim, head_dim=16, norm_groups=8, latent_channels=4)


def _inputs(spec, b=2):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(b, 4, 8, 8, generator=g), torch.tensor([100.0, 700.0][:b]),
            torch.randn(b, 5, spec.context_dim, generator=g))


def test_unet_has_diffusers_outputs_and_config(tmp_path):
    from diffusers import AutoModel

    torch.manual_seed(0)
    spec = _spec()
    unet = SnapGenUNet(arch=spec.to_dict(), sample_size=8).eval()
    x, t, ctx = _inputs(spec)
    with torch.no_grad():
        out = unet(x, t, ctx)
        tup = unet(x, t, ctx, return_dict=False)
        feats = unet(x, t, ctx, return_features=True, return_dict=False)
    assert isinstance(out, SnapGenUNetOutput) and out.sample.shape == x.shape and out.features is None
    assert isinstance(tup, tuple) and len(tup) == 1 and torch.equal(tup[0], out.sample)
    assert torch.equal(feats[0], out.sample) and set(feats[1]) == {"mid", "up.0", "up.1"}
    cfg = unet.config
    assert (cfg.in_channels, cfg.out_channels, cfg.sample_size) == (4, 4, 8)
    unet.save_pretrained(tmp_path / "u")
    saved = json.loads((tmp_path / "u" / "config.json").read_text())
    assert saved["auto_map"] == {"AutoModel": "unet.SnapGenUNet"} and saved["in_channels"] == 4
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModel.from_pretrained(str(tmp_path / "u"))  # code in a directory runs only when the caller says so
    back = AutoModel.from_pretrained(str(tmp_path / "u"), trust_remote_code=True, low_cpu_mem_usage=False).eval()
    assert type(back) is SnapGenUNet and back.config.sample_size == 8
    with torch.no_grad():
        assert torch.equal(back(x, t, ctx).sample, out.sample)


def test_decoders_are_vaes(tmp_path):
    from diffusers import AutoencoderKL, AutoModel
    from diffusers.models.autoencoders.vae import DecoderOutput

    from archsearch.cost import _fast_build, num_params
    from snapgen.decoder import AutoencoderKLDecoder, DecoderSpec, TinyDecoder, build_decoder, decode_path
    from snapgen.presets import load_decoder_preset

    torch.manual_seed(0)
    tiny = TinyDecoder.from_spec(DecoderSpec(channels=(32, 16, 8), blocks=(1, 1, 0),
                                             norm=("groupnorm", "none", "none"), latent_channels=4, out_channels=1))
    z = torch.randn(2, 4, 4, 4)
    with torch.no_grad():
        out = tiny.decode(z)
        assert isinstance(out, DecoderOutput) and torch.equal(out.sample, tiny(z))
        assert torch.equal(tiny.decode(z, return_dict=False)[0], out.sample)
    c = tiny.config
    assert (c.scaling_factor, c.shift_factor, c.latent_channels, c.out_channels) == (1.0, 0.0, 4, 1)
    assert 2 ** (len(c.block_out_channels) - 1) == tiny.spec.upscale == 4  # a pipeline's vae_scale_factor
    tiny.save_pretrained(tmp_path / "d")
    back = AutoModel.from_pretrained(str(tmp_path / "d"), trust_remote_code=True, low_cpu_mem_usage=False)
    assert type(back) is TinyDecoder and back.config.block_out_channels == c.block_out_channels
    with torch.no_grad():
        assert torch.equal(back.decode(z).sample, out.sample)
    # SD3 / SDXL baselines: real AutoencoderKLs; their decode path is what cost and latency measure
    sd3 = _fast_build(lambda: build_decoder(load_decoder_preset(None, "sd3")))
    assert isinstance(sd3, AutoencoderKL)
    assert num_params(decode_path(sd3)) == 49_545_475 < num_params(sd3)  # README: 49.545M (decoder part)
    small = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                          up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, latent_channels=4).eval()
    path = decode_path(small)
    assert isinstance(path, AutoencoderKLDecoder) and path.decoder is small.decoder  # shared, not copied
    with torch.no_grad():
        assert torch.equal(path(z), small.decode(z).sample)


# ---- the pipeline on random weights (no training) ----------------------------------------------
@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    """A saved SnapGenPipeline: random tiny UNet (MiniLM-sized context, pooled), a small AutoencoderKL
    with SD3-style scaling/shift, the embedded text encoder, the flow-matching Euler scheduler."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler

    from snapgen.pipeline import SnapGenPipeline
    from snapgen.text import class_conditioning, load_text_encoder

    torch.manual_seed(0)
    unet = SnapGenUNet(arch=_spec(384, 384).to_dict(), sample_size=8).eval()
    vae = AutoencoderKL(in_channels=1, out_channels=1, block_out_channels=(8, 16, 16), latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        norm_num_groups=8, scaling_factor=1.7, shift_factor=0.1).eval()
    tok, enc = load_text_encoder()
    table = class_conditioning(NAMES)  # how the proxy conditions: K class prompts + "" padded together
    pipe = SnapGenPipeline(unet=unet, vae=vae, text_encoder=enc, tokenizer=tok,
                           scheduler=FlowMatchEulerDiscreteScheduler(), context_length=table.context.shape[1],
                           sample_steps=4, cfg_scale=2.0, class_names=NAMES)
    d = tmp_path_factory.mktemp("pipe") / "p"
    pipe.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def pipe(pipe_dir):
    from snapgen.pipeline import SnapGenPipeline

    p = SnapGenPipeline.from_pretrained(pipe_dir)
    p.set_progress_bar_config(disable=True)
    return p


def _reference(pipe, names, per, seed, steps, cfg):
    """What `snapgen sample` computes: snapgen.flow.sample on the class table, decoded by the codec."""
    from snapgen.autoencoder import LatentCodec
    from snapgen.data.base import to_uint8
    from snapgen.flow import sample
    from snapgen.text import class_conditioning

    table = class_conditioning(NAMES)
    idx = torch.tensor([NAMES.index(n) for n in names]).repeat_interleave(per)
    b = len(idx)
    noise = torch.randn(b, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
    cond = {"encoder_hidden_states": table.context[idx], "pooled": table.pooled[idx]}
    unc = {"encoder_hidden_states": table.context[-1:].expand(b, -1, -1), "pooled": table.pooled[-1:].expand(b, -1)}
    z = sample(pipe.unet, noise, cond, unc, steps=steps, cfg_scale=cfg)
    return z, to_uint8(LatentCodec(pipe.vae, resolution=32).decode(z))


def test_pipeline_directory_is_standard(pipe_dir):
    index = json.loads((pipe_dir / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "SnapGenPipeline"]
    assert index["unet"] == ["snapgen.unet", "SnapGenUNet"] and index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    assert index["text_encoder"][0] == "transformers" and index["tokenizer"][0] == "transformers"
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (pipe_dir / part).is_dir(), part
    assert index["class_names"] == NAMES and index["sample_steps"] == 4


def test_pipeline_samples_as_snapgen_does(pipe, one_thread):
    names = ["bag", "sneaker"]
    prompts = pipe.class_prompts(names)
    assert prompts == ["a photo of a bag", "a photo of a sneaker"]
    z_ref, img_ref = _reference(pipe, names, 2, seed=3, steps=4, cfg=2.0)
    kw = dict(num_images_per_prompt=2)
    z = pipe(prompts, generator=torch.Generator().manual_seed(3), output_type="latent", **kw).images
    assert torch.equal(z, z_ref)  # 4 steps: exact step sizes, so bit for bit (see test_flow)
    pil = pipe(prompts, generator=torch.Generator().manual_seed(3), **kw).images
    assert len(pil) == 4 and pil[0].size == (32, 32) and pil[0].mode == "L"
    assert torch.equal(torch.stack([torch.from_numpy(np.array(p)) for p in pil]), img_ref[:, 0])
    pt = pipe(prompts, generator=torch.Generator().manual_seed(3), output_type="pt", **kw).images
    assert pt.shape == (4, 1, 32, 32) and 0 <= pt.min() and pt.max() <= 1
    assert (pt[:, 0] * 255 - img_ref[:, 0].float()).abs().max() <= 0.5 + 1e-3  # diffusers' [0, 1] images
    npy, = pipe(prompts, generator=torch.Generator().manual_seed(3), output_type="np", return_dict=False, **kw)
    assert isinstance(npy, np.ndarray) and npy.shape == (4, 32, 32, 1)
    # other step counts: equal to float32 rounding; no guidance (scale 1) is one unguided forward
    z3_ref, _ = _reference(pipe, names, 2, seed=3, steps=3, cfg=2.0)
    z3 = pipe(prompts, num_inference_steps=3, generator=torch.Generator().manual_seed(3), output_type="latent",
              **kw).images
    assert (z3 - z3_ref).abs().max() < 1e-5
    z1_ref, _ = _reference(pipe, names, 2, seed=3, steps=4, cfg=1.0)
    z1 = pipe(prompts, guidance_scale=1.0, generator=torch.Generator().manual_seed(3), output_type="latent",
              **kw).images
    assert torch.equal(z1, z1_ref) and not torch.equal(z1, z)
    zn = pipe(prompts, negative_prompt=["a photo of a coat"] * 2, generator=torch.Generator().manual_seed(3),
              output_type="latent", **kw).images
    assert not torch.equal(zn, z)
    with pytest.raises(ValueError, match="unknown class"):
        pipe.class_prompts(["dog"])


def test_diffusion_pipeline_loads_it_in_a_fresh_process(pipe_dir, pipe, tmp_path, one_thread):
    """`DiffusionPipeline.from_pretrained(dir, trust_remote_code=True)` with nothing of snapgen imported
    beforehand: the directory's one-line module brings SnapGenPipeline and its components."""
    code = ("import sys, numpy as np, torch\n"
            "from diffusers import DiffusionPipeline\n"
            "assert 'snapgen' not in sys.modules\n"
            "torch.set_num_threads(1)\n"
            f"p = DiffusionPipeline.from_pretrained({str(pipe_dir)!r}, trust_remote_code=True, low_cpu_mem_usage=False)\n"
            "p.set_progress_bar_config(disable=True)\n"
            "out = p(['a photo of a coat'], generator=torch.Generator().manual_seed(7), output_type='np').images\n"
            f"np.save({str(tmp_path / 'x.npy')!r}, out)\n"
            "print(type(p).__module__, type(p).__name__)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "snapgen.pipeline SnapGenPipeline"
    here = pipe(["a photo of a coat"], generator=torch.Generator().manual_seed(7), output_type="np").images
    assert np.array_equal(np.load(tmp_path / "x.npy"), here)


def test_export_diffusers_needs_a_run(tmp_path):
    r = subprocess.run([sys.executable, "-m", "snapgen", "export", "--preset", "f", "--format", "diffusers",
                        "-o", str(tmp_path / "o")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("error:")] == [
        "error: --preset: the diffusers pipeline is made from a trained run (its latent space, text encoder and "
        "conditioning): give --checkpoint RUN_DIR (a `snapgen train` output_dir)"]
    assert not (tmp_path / "o").exists()


# ---- slow: a trained test-size run, exported and reloaded, samples as `snapgen sample` does ------
@pytest.mark.slow
def test_exported_run_gives_snapgen_sample_image(tmp_path, fmnist_small, proxy_cache, one_thread):
    from PIL import Image

    from snapgen.commands.sample import write_grid
    from snapgen.pipeline import SnapGenPipeline
    from test_train import CFG, TINY, small_proxy, snapgen

    run, out = tmp_path / "run", tmp_path / "pipe"
    env = {"SNAPGEN_CACHE": str(proxy_cache)}
    snapgen("train", CFG, *TINY, *small_proxy(fmnist_small), "train.steps=6", "eval.at_end=false",
            "train.ckpt_every=0", f"output_dir={run}", env=env, check=True)
    snapgen("export", "--checkpoint", run, "--format", "diffusers", "-o", out, env=env, check=True)
    names, per, seed = ["sneaker", "bag"], 2, 5
    snapgen("sample", run, "--classes", ",".join(names), "--per-row", per, "--seed", seed, "-o", tmp_path / "a.png",
            env=env, check=True)
    pipe = SnapGenPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    c = pipe.config
    images = pipe(pipe.class_prompts(names), num_images_per_prompt=per,
                  generator=torch.Generator().manual_seed(seed)).images
    u8 = torch.stack([torch.from_numpy(np.array(im)) for im in images]).unsqueeze(1)
    write_grid(u8, names, tmp_path / "b.png", per_row=per, stage="base", steps=c.sample_steps, cfg_scale=c.cfg_scale,
               seed=seed)
    a, b = (np.asarray(Image.open(tmp_path / f), dtype=np.int16) for f in ("a.png", "b.png"))
    assert a.shape == b.shape and np.abs(a - b).max() == 0  # the same image, to the bit
    assert u8.float().std() > 5  # not a blank image: the comparison means something
