"""``psnr``: reconstruction quality of a decoder candidate, trained briefly against a frozen encoder.

As the paper trains its tiny decoder (§3.2) against the frozen encoder of the autoencoder, the
proxy trains the proxy-scaled candidate to decode the latents of a frozen proxy ``AutoencoderKL``
(the embedded small one of :mod:`snapgen.autoencoder`, here with four blocks so that its f = 8
matches the four-stage decoders of the space; trained once and cached, like the UNet proxy's) and
reports the PSNR of its reconstructions of held-out images. The proxy loss is MSE only (the
paper adds LPIPS and an adversarial loss for the full training); intermediate evaluations feed the
study's early stopping like the UNet proxy's. The training is a run of the engine
(:mod:`snapgen.train.engine`) on ``device``.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Callable

import torch

from snapgen.autoencoder import AEConfig
from snapgen.errors import TrainingError, UserError


@dataclass(frozen=True)
class DecoderProxyConfig:
    steps: int = 300
    batch_size: int = 64
    lr: float = 2e-3
    width_mult: float = 0.25
    norm_groups: int = 8
    num_samples: int = 500  # held-out images for the PSNR
    train_images: int = 0  # 0: the whole training split; else its first N (autoencoder and decoder)
    eval_every: int = 100
    data_path: str | None = None
    ae: AEConfig = field(default_factory=lambda: AEConfig(block_out_channels=(16, 32, 32, 32)))
    device: str = "auto"  # auto (CUDA, then MPS, then CPU) | cpu | cuda | cuda:N | mps
    threads: int = 1
    progress: bool = True

    def validate(self) -> "DecoderProxyConfig":
        for k in ("steps", "batch_size", "num_samples", "norm_groups"):
            if getattr(self, k) < 1:
                raise UserError(f"must be >= 1, got {getattr(self, k)}", key=k)
        if self.width_mult <= 0 or self.lr <= 0:
            raise UserError("width_mult and lr must be > 0", key="width_mult")
        from snapgen.train.device import check_device

        check_device(self.device, key="device")
        return self


def decoder_proxy_config(data, *, file: str | None = None, **defaults) -> DecoderProxyConfig:
    from snapgen.config import structured

    merged = {**defaults, **dict(data or {})}
    cfg = structured(DecoderProxyConfig, merged, file=file, prefix="proxy.")
    try:
        return cfg.validate()
    except UserError as e:
        raise UserError(e.message, file=file, key=f"proxy.{e.key}" if e.key else "proxy") from None


@dataclass(frozen=True)
class DecoderResult:
    metric: str
    value: float
    steps: int
    seconds: float
    evaluations: tuple
    stopped_early: bool
    params: int
    device: str = "cpu"  # where it trained (cpu, cuda:N, mps)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["evaluations"] = [list(e) for e in self.evaluations]
        return d


@lru_cache(maxsize=2)
def _assets(data_path, ae: AEConfig, n_eval: int, n_train: int = 0):
    """(train latents, train images, held-out latents, held-out images), images in [-1, 1] at the AE resolution."""
    from snapgen.autoencoder import cached_latents, proxy_autoencoder
    from snapgen.cache import combine
    from snapgen.data import fashion_mnist
    from snapgen.data.base import LabelledImages

    train, test = fashion_mnist.load("train", data_path), fashion_mnist.load("test", data_path)
    if 0 < n_train < len(train):
        train = LabelledImages(train.images[:n_train], train.labels[:n_train], train.class_names,
                               combine(train.content_hash, f"first{n_train}"), train.source)
    codec = proxy_autoencoder(ae, train, test)
    lat, _ = cached_latents(codec, train)
    # Latents of the held-out images: small, encoded here (posterior means, as for the training set).
    held = test.images[:n_eval]
    return lat, codec.prepare(train.images), codec.encode(held), codec.prepare(held), codec


def proxy_decoder_spec(spec, cfg: DecoderProxyConfig, latent_channels: int, out_channels: int):
    q = cfg.norm_groups
    ch = tuple(max(q, int(round(c * cfg.width_mult / q)) * q) for c in spec.channels)
    return replace(spec, channels=ch, latent_channels=latent_channels, out_channels=out_channels,
                   norm_groups=q, name=f"{spec.name}-proxy").validate()


def decoder_quality(spec, cfg: DecoderProxyConfig, *, seed: int,
                    on_eval: Callable[[int, float], bool] | None = None) -> DecoderResult:
    """A run of the training engine (MSE-only :class:`DecoderReconstruction`, cosine LR) on ``cfg.device``."""
    from snapgen.autoencoder import psnr
    from snapgen.progress import progress
    from snapgen.decoder import DecoderSpec, TinyDecoder
    from snapgen.train.batches import RandomBatches
    from snapgen.train.device import describe, resolve_device
    from snapgen.train.engine import Engine, Evaluate, Progress, Recipe
    from snapgen.train.reconstruction import DecoderReconstruction

    if not isinstance(spec, DecoderSpec):
        raise UserError(f"psnr needs a tiny-decoder spec, got {type(spec).__name__} (sd3/sdxl are baselines)",
                        key="objectives")
    prev = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    try:
        lat, images, held_lat, held_img, codec = _assets(cfg.data_path, cfg.ae, cfg.num_samples, cfg.train_images)
        if codec.downsample != spec.upscale:
            raise UserError(f"the proxy autoencoder downsamples by {codec.downsample} but the decoder upsamples by "
                            f"{spec.upscale}; set proxy.ae.block_out_channels to {len(spec.channels)} blocks",
                            key="proxy.ae")
        device = resolve_device(cfg.device)
        pspec = proxy_decoder_spec(spec, cfg, lat.shape[1], images.shape[1])
        torch.manual_seed(seed)
        model = TinyDecoder.from_spec(pspec).to(device)
        # Back from the diffusion-normalised latents to the decoder's input space.
        to_vae = lambda z: z / codec.scaling_factor + codec.shift_factor  # noqa: E731
        held_z, held_x = to_vae(held_lat).to(device), held_img.to(device)

        def evaluate(engine) -> float:
            model.eval()
            with torch.no_grad():
                rec = torch.cat([model(held_z[i:i + 250]).clamp(-1, 1) for i in range(0, len(held_z), 250)])
            model.train()
            v = psnr(rec, held_x)
            if not math.isfinite(v):
                raise TrainingError(f"decoder proxy produced non-finite reconstructions at step {engine.step}")
            return v

        ev = Evaluate(evaluate, range(cfg.eval_every, cfg.steps, cfg.eval_every) if cfg.eval_every else (), on_eval)
        batches = RandomBatches({"z": lat, "x": images}, cfg.batch_size, seed=seed, device=device,
                                transform=lambda b, g: {"z": to_vae(b["z"]), "x": b["x"]})
        engine = Engine(model, DecoderReconstruction(), batches,
                        Recipe(steps=cfg.steps, lr=cfg.lr, schedule="cosine"), device=device,
                        hooks=[Progress(cfg.steps, f"decoder proxy {spec.name}", enabled=cfg.progress), ev],
                        batch_size=cfg.batch_size).run()
        return DecoderResult("psnr", ev.evaluations[-1][1], engine.step, time.perf_counter() - t_start,
                             tuple(ev.evaluations), engine.stopped, sum(p.numel() for p in model.parameters()),
                             describe(device))
    finally:
        torch.set_num_threads(prev)
