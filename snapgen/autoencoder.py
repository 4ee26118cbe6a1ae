"""The latent space the proxy UNet denoises, as in the paper.

* Real runs load a diffusers ``AutoencoderKL`` (e.g. SD3's 16-channel VAE) by path or hub id; its
  ``scaling_factor`` / ``shift_factor`` map latents to the diffusion space (SD3 convention:
  ``(z - shift) * scale``).
* The embedded default trains a small ``AutoencoderKL`` on the proxy images once (Fashion-MNIST
  padded to 32x32, f=4 -> 8x8x4 latents), caches it under a key hashing the data and the config,
  measures its reconstruction PSNR on held-out images and stores it in ``report.json`` beside the
  weights. The data set is then encoded once and the latents cached (keyed by autoencoder + data).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from snapgen.cache import (atomic_torch_save, atomic_write_json, cache_dir, combine, get_or_build, hash_config,
                           load_tensors)
from snapgen.data.base import LabelledImages
from snapgen.errors import UserError


@dataclass(frozen=True)
class AEConfig:
    """The small proxy autoencoder and its one-off training run."""

    resolution: int = 32
    block_out_channels: tuple[int, ...] = (8, 16, 32)  # 3 blocks -> f = 4
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 8
    mid_block_attention: bool = False
    steps: int = 800
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 20  # linear warm-up, then cosine decay to 0
    kl_weight: float = 1e-6
    seed: int = 0
    eval_images: int = 1000  # held-out images (the test split's first N) for the PSNR report


def fit_resolution(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """float (N, C, H, W) -> (N, C, R, R): zero-pad (background) when smaller, resize when larger."""
    h, w = images.shape[-2:]
    if (h, w) == (resolution, resolution):
        return images
    if h <= resolution and w <= resolution:
        ph, pw = resolution - h, resolution - w
        return F.pad(images, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=-1.0)
    return F.interpolate(images, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)


class LatentCodec:
    """An ``AutoencoderKL`` plus its latent normalisation; encodes uint8/float images, decodes to [-1, 1]."""

    def __init__(self, vae, *, resolution: int, key: str = "", report: dict | None = None):
        self.vae = vae.eval().requires_grad_(False)
        self.resolution = resolution
        self.key = key
        self.report = report or {}
        cfg = vae.config
        self.scaling_factor = float(cfg.scaling_factor)
        self.shift_factor = float(getattr(cfg, "shift_factor", None) or 0.0)
        self.in_channels = int(cfg.in_channels)

    def to(self, device) -> "LatentCodec":
        """Encode and decode on ``device`` (inputs are moved there, outputs come back to the CPU)."""
        self.vae.to(device)
        return self

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_size(self) -> int:
        return self.resolution // self.downsample

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div(127.5).sub(1.0) if images.dtype == torch.uint8 else images.float()
        if x.shape[1] != self.in_channels:
            if x.shape[1] == 1:
                x = x.expand(-1, self.in_channels, -1, -1)
            elif self.in_channels == 1:
                x = x.mean(1, keepdim=True)
        return fit_resolution(x, self.resolution)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, batch_size: int = 500, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Images -> normalised latents ``(z - shift) * scale`` (posterior mean unless ``sample``)."""
        dev = next(self.vae.parameters()).device
        out = []
        for i in range(0, len(images), batch_size):
            post = self.vae.encode(self.prepare(images[i:i + batch_size]).to(dev)).latent_dist
            z = post.sample(generator) if sample else post.mean
            out.append(((z - self.shift_factor) * self.scaling_factor).float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """Normalised latents -> images in [-1, 1]."""
        dev = next(self.vae.parameters()).device
        out = []
        for i in range(0, len(latents), batch_size):
            z = latents[i:i + batch_size].to(dev) / self.scaling_factor + self.shift_factor
            out.append(self.vae.decode(z).sample.clamp(-1, 1).float().cpu())
        return torch.cat(out)


def load_autoencoder(path_or_id: str, *, resolution: int, subfolder: str | None = None) -> LatentCodec:
    """A pretrained diffusers ``AutoencoderKL`` (a local path or a hub id; ``subfolder="vae"`` for a
    full pipeline repository)."""
    from diffusers import AutoencoderKL

    local = Path(path_or_id).expanduser().is_dir()
    if local and subfolder is None and (Path(path_or_id) / "vae" / "config.json").is_file():
        subfolder = "vae"
    try:
        vae = AutoencoderKL.from_pretrained(path_or_id, subfolder=subfolder, local_files_only=local,
                                            low_cpu_mem_usage=False)  # no accelerate needed (or warned about)
    except (OSError, ValueError, EnvironmentError) as e:
        raise UserError(f"cannot load AutoencoderKL: {str(e).splitlines()[0][:300]}", file=path_or_id) from None
    return LatentCodec(vae, resolution=resolution, key=combine(path_or_id, subfolder or ""))


# ---- the embedded small autoencoder ---------------------------------------------------------------
def _build_vae(cfg: AEConfig, channels: int):
    from diffusers import AutoencoderKL

    n = len(cfg.block_out_channels)
    return AutoencoderKL(in_channels=channels, out_channels=channels, down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(cfg.block_out_channels),
                         layers_per_block=cfg.layers_per_block, latent_channels=cfg.latent_channels,
                         norm_num_groups=cfg.norm_num_groups, sample_size=cfg.resolution,
                         mid_block_add_attention=cfg.mid_block_attention)


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2), averaged over images."""
    mse = ((x - y) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return float((10 * torch.log10(4.0 / mse)).mean())


class _VAELoss:
    """The autoencoder's objective (engine signature): reconstruction MSE of a posterior sample +
    ``kl_weight`` KL. The sample is drawn from the data stream's generator (one random stream)."""

    def __init__(self, kl_weight: float, generator: torch.Generator):
        self.kl_weight, self.generator = kl_weight, generator

    def __call__(self, vae, batch: dict, step: int):
        x = batch["x"]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(self.generator)).sample
        return F.mse_loss(rec, x) + self.kl_weight * post.kl().mean(), {}


def _train_vae(cfg: AEConfig, train: LabelledImages, held_out: LabelledImages, out_dir: Path) -> torch.Tensor:
    """Train, normalise, measure and save the autoencoder; returns the normalised latents of ``train``
    (the normalisation pass encodes the whole set anyway, so the latent cache needs no second pass).
    Trained by the engine on the CPU: a cached asset must not depend on the machine that built it."""
    from snapgen.train.batches import RandomBatches
    from snapgen.train.engine import Engine, Progress, Recipe

    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    vae = _build_vae(cfg, train.channels)
    codec_prep = LatentCodec(vae, resolution=cfg.resolution)  # only for .prepare
    vae.train().requires_grad_(True)
    data = codec_prep.prepare(train.images)  # float, in memory once
    t0 = time.time()
    recipe = Recipe(steps=cfg.steps, lr=cfg.lr, warmup_steps=cfg.warmup_steps, schedule="cosine", check_every=50)
    engine = Engine(vae, _VAELoss(cfg.kl_weight, g), RandomBatches({"x": data}, cfg.batch_size, generator=g),
                    recipe, hooks=[Progress(cfg.steps, "autoencoder (once)")], lr_key="ae.lr", batch_size=cfg.batch_size)
    engine.run()
    vae.eval().requires_grad_(False)
    # Latent normalisation (SD3 convention): shift = mean, scale = 1 / std of the posterior means
    # (of the whole training set: these are also the cached training latents).
    t_enc = time.time()
    with torch.no_grad():
        z = torch.cat([vae.encode(data[i:i + 500]).latent_dist.mean.float() for i in range(0, len(data), 500)])
    vae.register_to_config(scaling_factor=float(1.0 / z.std()), shift_factor=float(z.mean()))
    codec = LatentCodec(vae, resolution=cfg.resolution)
    latents = (z - codec.shift_factor) * codec.scaling_factor
    encode_s = time.time() - t_enc
    real = codec.prepare(held_out.images[: cfg.eval_images])
    rec = codec.decode(codec.encode(held_out.images[: cfg.eval_images]))
    report = {"psnr_db": psnr(rec, real), "eval_images": len(real), "train_seconds": time.time() - t0,
              "encode_seconds": encode_s, "steps": cfg.steps,
              "final_loss": engine.loss_value, "config": asdict(cfg), "data_hash": train.content_hash,
              "params": sum(p.numel() for p in vae.parameters()),
              "latent_shape": [cfg.latent_channels, codec.latent_size, codec.latent_size],
              "scaling_factor": codec.scaling_factor, "shift_factor": codec.shift_factor}
    vae.save_pretrained(out_dir, safe_serialization=True)
    atomic_write_json(out_dir / "report.json", report)
    return latents


def proxy_autoencoder(cfg: AEConfig, train: LabelledImages, held_out: LabelledImages) -> LatentCodec:
    """The small autoencoder for ``train``, trained once and cached by (data hash, config hash)."""
    from diffusers import AutoencoderKL

    key = combine(train.content_hash, held_out.content_hash, hash_config(cfg))
    root = cache_dir("autoencoder")
    final = root / key
    built = {"trained": False, "latents": None}

    def build():
        tmp = root / f".{key}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            built["latents"] = _train_vae(cfg, train, held_out, tmp)
            if final.exists():  # a stale, unmarked directory (cannot normally happen)
                shutil.rmtree(final)
            os.replace(tmp, final)  # the whole directory appears at once, report.json included
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        built["trained"] = True

    get_or_build(final / "report.json", build, lock=root / f"{key}.lock")
    report = json.loads((final / "report.json").read_text())
    report["cache_hit"] = not built["trained"]
    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()  # silence the "accelerate not found" advice on every load
    try:
        vae = AutoencoderKL.from_pretrained(final, local_files_only=True, low_cpu_mem_usage=False)
    finally:
        dlogging.set_verbosity(level)
    codec = LatentCodec(vae, resolution=cfg.resolution, key=key, report=report)
    if built["latents"] is not None:  # just trained: hand the training latents to cached_latents
        codec._fresh_latents = (train.content_hash, built["latents"])
    return codec


def _latents_path(codec: LatentCodec, data: LabelledImages) -> Path:
    return cache_dir("latents") / f"{combine(codec.key, data.content_hash, str(codec.resolution))}.pt"


def cached_latents(codec: LatentCodec, data: LabelledImages) -> tuple[torch.Tensor, bool]:
    """Normalised latents of ``data`` under ``codec``: encoded once, cached by (codec key, data hash).
    Returns (latents, cache_hit)."""
    path = _latents_path(codec, data)
    built = {"hit": True}
    fresh = getattr(codec, "_fresh_latents", None)

    def build():
        built["hit"] = False
        if fresh is not None and fresh[0] == data.content_hash and len(fresh[1]) == len(data):
            lat = fresh[1]  # computed while building the autoencoder (same encoder, same normalisation)
        else:
            lat = codec.encode(data.images)
        atomic_torch_save({"latents": lat}, path)

    get_or_build(path, build)
    lat = load_tensors(path)["latents"]
    if len(lat) != len(data):
        raise UserError(f"cached latents {path} do not match the data ({len(lat)} vs {len(data)}); delete the file")
    return lat, built["hit"]
