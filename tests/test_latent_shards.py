"""Pre-encoded latent shards end to end: ``snapgen encode`` (as a subprocess) on a tiny ImageFolder
with a tiny random diffusers ``AutoencoderKL``, the shard directory's completeness rules, and the
proxy's ``dataset: latents`` (assets straight from the shards, one-line validation errors, training
and sampling up to the Inception metric). CPU, no network."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from proxy_helpers import small_spec
from snapgen import proxy
from snapgen.data import ImageFolderDataset, LatentShardWriter, load_latent_shards, write_latent_shards
from snapgen.errors import DataError, UserError
from snapgen.proxy import ProxyConfig, prepare_assets, run_proxy

ROOT = Path(__file__).resolve().parents[1]
CLASS_IDS = ("n01", "n02", "n03")
PER_CLASS = 3
RESOLUTION = 16  # the tiny autoencoder has f = 2: 8x8x4 latents


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    """A tiny random AutoencoderKL saved like a pretrained one (SD's default scaling_factor 0.18215)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=4, norm_num_groups=8, sample_size=RESOLUTION)
    d = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    """3 classes x 3 random non-square RGB PNGs (the encoder centre-crops and resizes them)."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c in CLASS_IDS:
        (root / c).mkdir()
        for i in range(PER_CLASS):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    (root.parent / "classes.json").write_text(json.dumps({"n01": "gold_fish", "n02": "shark", "n03": "ray"}))
    return root


def _encode(image_dir: Path, vae_dir: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snapgen.cli", "encode", str(image_dir), "--autoencoder", str(vae_dir),
           "--resolution", str(RESOLUTION), "-o", str(out), "--batch-size", "4", "--no-progress", *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory, image_dir, vae_dir) -> Path:
    """``snapgen encode`` output: 9 latents in shards of 4 (4 + 4 + 1)."""
    out = tmp_path_factory.mktemp("shards") / "latents"
    r = _encode(image_dir, vae_dir, out, "--shard-size", "4", "--class-map", str(image_dir.parent / "classes.json"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and "9 images -> 3 shards of 4x8x8 latents in" in lines[0], r.stdout
    return out


@pytest.fixture
def latents_cfg(shard_dir, vae_dir, proxy_cache):
    """A seconds-sized latents proxy (the session cache holds the text embeddings)."""
    proxy._ASSETS.clear()
    yield ProxyConfig(dataset="latents", data_path=str(shard_dir), autoencoder=str(vae_dir), metric="fid",
                      resolution=RESOLUTION, steps=4, batch_size=8, num_samples=6, sample_steps=2, progress=False)
    proxy._ASSETS.clear()


# ---- snapgen encode ---------------------------------------------------------------------------------
def test_encode_writes_unscaled_posterior_means_with_class_names(shard_dir, image_dir, vae_dir):
    from snapgen.autoencoder import load_autoencoder

    s = load_latent_shards(shard_dir)
    assert s.latents.shape == (9, 4, 8, 8) and s.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert s.class_names == ("gold fish", "shark", "ray")
    assert sorted(p.name for p in shard_dir.glob("*.safetensors")) == [f"shard-0000{i}.safetensors" for i in range(3)]
    meta = json.loads((shard_dir / "meta.json").read_text())
    assert meta["count"] == 9 and meta["resolution"] == RESOLUTION and meta["autoencoder"] == str(vae_dir)
    codec = load_autoencoder(str(vae_dir), resolution=RESOLUTION)
    assert s.scaling_factor == codec.scaling_factor == pytest.approx(0.18215) and s.shift_factor == 0.0
    data = ImageFolderDataset(image_dir, RESOLUTION)
    images = torch.stack([data[i][0] for i in range(len(data))])
    with torch.no_grad():
        means = codec.vae.encode(codec.prepare(images)).latent_dist.mean
    assert torch.allclose(s.latents, means, atol=1e-5)  # unscaled, as the shard format says
    assert torch.allclose(s.normalized(), codec.encode(images), atol=1e-5)


def test_encode_refuses_to_overwrite_a_complete_directory(shard_dir, image_dir, vae_dir, tmp_path, capsys):
    from snapgen.cli import main

    out = tmp_path / "copy"
    shutil.copytree(shard_dir, out)
    argv = ["encode", str(image_dir), "--autoencoder", str(vae_dir), "--resolution", str(RESOLUTION), "-o", str(out),
            "--no-progress"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "pass --overwrite" in err[0] and str(out) in err[0]
    assert len(list(out.glob("*.safetensors"))) == 3  # untouched
    assert main(argv + ["--overwrite"]) == 0  # default shard size: one shard replaces the three
    assert [p.name for p in out.glob("*.safetensors")] == ["shard-00000.safetensors"]
    assert torch.allclose(load_latent_shards(out).latents, load_latent_shards(shard_dir).latents, atol=1e-6)
    assert "9 images -> 1 shards" in capsys.readouterr().out


def test_unreadable_image_in_a_worker_is_one_line_and_nothing_loads(image_dir, vae_dir, tmp_path, capsys):
    from snapgen.cli import main

    images = tmp_path / "images"
    shutil.copytree(image_dir, images)
    (images / "n03" / "zz-broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(["encode", str(images), "--autoencoder", str(vae_dir), "--resolution", str(RESOLUTION), "-o", str(out),
              "--batch-size", "4", "--shard-size", "4", "--workers", "1", "--no-progress"])
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.startswith("error: ")]
    assert e.value.code == 2 and err == [f"error: {images / 'n03' / 'zz-broken.png'}: unreadable image: "
                                         "UnidentifiedImageError"]
    assert list(out.glob("*.safetensors")) and not (out / "meta.json").exists()  # shards so far, no meta
    with pytest.raises(DataError, match="missing meta.json"):
        load_latent_shards(out)


# ---- the shard directory: complete only with meta.json --------------------------------------------
def test_killed_write_does_not_load_and_the_next_write_replaces_it(tmp_path):
    d = tmp_path / "shards"
    w = LatentShardWriter(d, shard_size=2)
    w.add(torch.randn(5, 4, 8, 8), torch.zeros(5, dtype=torch.long))  # two full shards on disk, then "killed"
    assert w.shards == 2 and not (d / "meta.json").exists()
    with pytest.raises(DataError, match="missing meta.json"):
        load_latent_shards(d)
    lat = torch.randn(3, 4, 8, 8)
    write_latent_shards(d, lat, torch.tensor([0, 1, 0]), ["a", "b"], shard_size=2)  # stale shards removed
    s = load_latent_shards(d)
    assert torch.equal(s.latents, lat) and len(list(d.glob("*.safetensors"))) == 2
    (d / "shard-00001.safetensors").unlink()
    with pytest.raises(DataError, match="records 3 latents but the shards hold 2"):
        load_latent_shards(d)


def test_writer_refuses_latent_files_it_did_not_write(tmp_path):
    d = tmp_path / "mixed"
    d.mkdir()
    torch.save({"latents": torch.zeros(1, 4, 8, 8), "labels": torch.zeros(1)}, d / "mine.pt")
    with pytest.raises(DataError, match=r"mixed: holds latent files not written by snapgen \(mine.pt\)"):
        LatentShardWriter(d)
    assert (d / "mine.pt").exists()


# ---- the proxy on latent shards ---------------------------------------------------------------------
def test_assets_come_from_the_shards(latents_cfg, shard_dir, image_dir):
    shards = load_latent_shards(shard_dir)
    a = prepare_assets(latents_cfg)
    assert torch.equal(a.latents, shards.normalized()) and torch.equal(a.labels, shards.labels)
    assert a.class_names == ("gold fish", "shark", "ray") and a.context.shape[0] == 4  # 3 prompts + null
    assert a.info["latent_shape"] == [4, 8, 8] and a.info["train_images"] == 9
    # default reference: the decode of a fixed, evenly spaced slice (num_samples of them, every class)
    assert a.info["reference"] == "decoded-shard-latents" and a.info["reference_images"] == 6
    idx = [0, 2, 3, 5, 6, 8]
    assert shards.labels[idx].unique().tolist() == [0, 1, 2]
    expected = ((a.codec.decode(shards.normalized()[idx]) + 1) * 127.5).round().to(torch.uint8)
    assert a.reference.shape == (6, 3, RESOLUTION, RESOLUTION) and torch.equal(a.reference, expected)
    spec = proxy.proxy_spec(small_spec(), latents_cfg, latent_channels=4, context_dim=a.context.shape[-1])
    assert spec.latent_channels == 4
    # real images as the reference, when given
    b = prepare_assets(replace(latents_cfg, reference_path=str(image_dir)))
    assert b.info["reference"] == str(image_dir) and b.reference.shape == (9, 3, RESOLUTION, RESOLUTION)
    assert b.reference_key != a.reference_key and torch.equal(b.latents, a.latents)


def test_run_proxy_trains_and_samples_then_needs_inception_weights(latents_cfg, monkeypatch):
    """Offline (simulated: torch-fidelity's download raises), the run trains and samples from the
    shards and only then stops at the metric with the one-line inception_weights error."""
    import torch_fidelity.feature_extractor_inceptionv3 as inception

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(inception, "load_state_dict_from_url", offline)
    generated = []
    real_generate = proxy.generate
    monkeypatch.setattr(proxy, "generate", lambda *a, **k: generated.append(real_generate(*a, **k)) or generated[-1])
    with pytest.raises(UserError) as e:
        run_proxy(small_spec(), latents_cfg, seed=0)
    assert e.value.key == "inception_weights" and "\n" not in e.value.line()
    assert "cannot fetch torch-fidelity's Inception weights" in e.value.line()
    images, labels = generated[0]
    assert images.shape == (6, 3, RESOLUTION, RESOLUTION) and images.dtype == torch.uint8
    assert labels.tolist() == [0, 1, 2, 0, 1, 2]


@pytest.mark.parametrize("over, key, message", [
    (dict(data_path=None), "data_path", "the latents dataset needs data_path"),
    (dict(autoencoder=None), "autoencoder", "the latents dataset needs autoencoder"),
    (dict(metric="fd-fmnist"), "metric", "fd-fmnist is defined on Fashion-MNIST only"),
])
def test_latents_config_errors_are_one_line(over, key, message):
    cfg = ProxyConfig(dataset="latents", data_path="/shards", autoencoder="/vae", metric="fid")
    with pytest.raises(UserError) as e:
        run_proxy(small_spec(), replace(cfg, **over))
    assert e.value.key == key and message in e.value.line() and "\n" not in e.value.line()
    with pytest.raises(UserError, match="only the latents dataset takes reference_path"):
        ProxyConfig(dataset="imagefolder", data_path="/x", metric="fid", reference_path="/y").validate()


def test_shards_from_another_latent_space_are_refused(latents_cfg, tmp_path):
    def shards(name, channels=4, size=8, scaling_factor=0.18215):
        d = tmp_path / name
        write_latent_shards(d, torch.randn(3, channels, size, size), torch.tensor([0, 1, 0]), ["a", "b"],
                            scaling_factor=scaling_factor)
        return str(d)

    cases = [(shards("channels", channels=16), "autoencoder", "the latent shards have 16 channels but the "
                                                              "autoencoder has 4"),
             (shards("scale", scaling_factor=1.0), "scaling_factor", "scale/meta.json: scaling_factor: "
                                                                     "scaling_factor 1.0 differs"),
             (shards("size", size=4), "resolution", "decodes to 8x8; set resolution to 8")]
    for path, key, message in cases:
        with pytest.raises(UserError) as e:
            prepare_assets(replace(latents_cfg, data_path=path))
        assert e.value.key == key and message in e.value.line() and "\n" not in e.value.line(), e.value.line()
