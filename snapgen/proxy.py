"""The ImageNet-style proxy: train an architecture small and short, sample, score.

``run_proxy(spec, cfg, seed=...)`` scales ``spec`` to proxy size, trains it with rectified flow on
cached autoencoder latents of the proxy data, or on pre-encoded latent shards (``dataset="latents"``,
written by ``snapgen encode``), with class prompts through a light text encoder as
cross-attention context), samples ``num_samples`` images with CFG and returns a Fréchet distance
(``fd-fmnist`` offline by default, Inception ``fid`` on real data). Intermediate evaluations are
reported through ``on_eval(step, value)``; returning True or raising :class:`StopTrial` stops the
run (multi-fidelity / successive-halving early stopping in the study layer).

Everything expensive that does not depend on the architecture — data, autoencoder, latents, text
embeddings, metric classifier, reference statistics — is built once, cached on disk by content
hash and kept in memory for the process (:func:`prepare_assets`).
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from snapgen.autoencoder import AEConfig, LatentCodec, cached_latents, load_autoencoder, proxy_autoencoder
from snapgen.cache import combine
from snapgen.data.base import LabelledImages, to_uint8
from snapgen.data.latents import LatentSet, load_latent_shards
from snapgen.errors import DataError, TrainingError, UserError
from snapgen.flow import EMA, drop_condition, interpolate, logit_normal, sample, velocity_target
from snapgen.metrics.classifier import ClassifierConfig
from snapgen.spec import ArchSpec
from snapgen.text import DEFAULT_ENCODER, DEFAULT_TEMPLATE, class_conditioning

DATASETS = ("fashion-mnist", "imagefolder", "latents")


class StopTrial(Exception):
    """Raised by an ``on_eval`` callback to stop training early (the result keeps what was measured)."""


@dataclass(frozen=True)
class ProxyConfig:
    """Budget and settings of one proxy evaluation. The defaults are what a study uses."""

    # training budget
    steps: int = 120
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 10
    weight_decay: float = 0.0
    ema_decay: float = 0.99  # 0 disables EMA (sample from the raw weights)
    p_uncond: float = 0.1  # condition dropout for classifier-free guidance
    logit_mean: float = 0.0
    logit_std: float = 1.0
    # proxy size
    width_mult: float = 0.125
    depth_mult: float = 0.25
    head_dim: int = 16
    norm_groups: int = 8
    # evaluation
    num_samples: int = 500
    sample_steps: int = 8
    sampler: str = "euler"
    cfg_scale: float = 2.0
    eval_every: int = 0  # 0: no periodic intermediate evaluations
    eval_at: tuple[int, ...] = ()  # extra intermediate evaluation steps
    metric: str = "fd-fmnist"  # or "fid" (Inception; needs inception_weights offline)
    inception_weights: str | None = None
    # data, latent space, conditioning
    dataset: str = "fashion-mnist"
    data_path: str | None = None  # Fashion-MNIST IDX dir, ImageFolder root or latent shard dir
    class_map: str | None = None  # ImageFolder class-name map (JSON)
    reference_path: str | None = None  # latents: ImageFolder of real images for fid (None: decoded shard latents)
    resolution: int = 32
    autoencoder: str | None = None  # diffusers AutoencoderKL path / hub id; None: the embedded small one
    ae: AEConfig = field(default_factory=AEConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    text_encoder: str = DEFAULT_ENCODER
    prompt_template: str = DEFAULT_TEMPLATE
    null_condition: str = "empty"
    # runtime
    threads: int = 1  # torch CPU threads during the run and the asset build (0: leave as is); 1 is robust on shared CPUs
    progress: bool = True

    def validate(self) -> "ProxyConfig":
        def err(key, msg):
            return UserError(msg, key=key)

        for k in ("batch_size", "num_samples", "sample_steps", "head_dim", "norm_groups"):
            if getattr(self, k) < 1:
                raise err(k, f"must be >= 1, got {getattr(self, k)}")
        if self.steps < 0:
            raise err("steps", f"must be >= 0, got {self.steps}")
        if not (self.width_mult > 0 and self.depth_mult > 0):
            raise err("width_mult", "width_mult and depth_mult must be > 0")
        if not 0 <= self.p_uncond < 1:
            raise err("p_uncond", f"must be in [0, 1), got {self.p_uncond}")
        if not 0 <= self.ema_decay < 1:
            raise err("ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        if self.sampler not in ("euler", "heun"):
            raise err("sampler", f"unknown sampler {self.sampler!r}; allowed: euler, heun")
        if self.dataset not in DATASETS:
            raise err("dataset", f"unknown dataset {self.dataset!r}; allowed: {', '.join(DATASETS)}")
        if self.metric not in ("fd-fmnist", "fid"):
            raise err("metric", f"unknown metric {self.metric!r}; allowed: fd-fmnist, fid")
        if self.metric == "fd-fmnist" and self.dataset != "fashion-mnist":
            raise err("metric", "fd-fmnist is defined on Fashion-MNIST only; use metric: fid for other data")
        if self.dataset == "imagefolder" and not self.data_path:
            raise err("data_path", "the imagefolder dataset needs data_path (the ImageFolder root)")
        if self.dataset == "latents":
            if not self.data_path:
                raise err("data_path", "the latents dataset needs data_path (a shard directory from snapgen encode)")
            if not self.autoencoder:
                raise err("autoencoder", "the latents dataset needs autoencoder (the AutoencoderKL that encoded "
                                         "the shards; it decodes the samples)")
        elif self.reference_path:
            raise err("reference_path", "only the latents dataset takes reference_path (the other datasets' "
                                        "real images are their own reference)")
        return self

    def eval_steps(self) -> list[int]:
        """Sorted intermediate evaluation steps (the final step is always evaluated)."""
        s = set(x for x in self.eval_at if 0 < x < self.steps)
        if self.eval_every > 0:
            s.update(range(self.eval_every, self.steps, self.eval_every))
        return sorted(s)


@dataclass(frozen=True)
class ProxyResult:
    metric: str
    value: float
    steps: int  # optimisation steps actually taken
    seconds: float  # wall clock of the whole evaluation (warm caches: no artefact training)
    evaluations: tuple[tuple[int, float], ...]  # (step, value), intermediate ones and the final one
    spec: ArchSpec  # the proxy-sized spec that was trained
    params: int
    train_seconds: float
    eval_seconds: float
    images_per_second: float
    final_loss: float
    stopped_early: bool
    assets: dict  # autoencoder PSNR, classifier accuracy, cache hits
    samples: torch.Tensor | None = field(default=None, repr=False)  # uint8 images of the last evaluation
    sample_labels: torch.Tensor | None = field(default=None, repr=False)
    samples_by_step: dict = field(default_factory=dict, repr=False)  # step -> uint8 images of each evaluation

    def to_dict(self) -> dict:
        return {"metric": self.metric, "value": self.value, "steps": self.steps, "seconds": self.seconds,
                "evaluations": [list(e) for e in self.evaluations], "params": self.params,
                "train_seconds": self.train_seconds, "eval_seconds": self.eval_seconds,
                "images_per_second": self.images_per_second, "final_loss": self.final_loss,
                "stopped_early": self.stopped_early, "assets": self.assets, "spec": self.spec.to_dict()}


# ---- assets (everything that does not depend on the architecture) -------------------------------
@dataclass(frozen=True, eq=False)
class ProxyAssets:
    latents: torch.Tensor  # (N, C, h, w) normalised training latents
    labels: torch.Tensor  # (N,)
    class_names: tuple[str, ...]
    context: torch.Tensor  # (K + 1, L, D): class prompts + null condition (row K)
    pooled: torch.Tensor  # (K + 1, D)
    codec: LatentCodec
    reference: torch.Tensor  # uint8 reference images for the metric (real, or decoded shard latents)
    reference_key: str
    metric_weights: str | None
    info: dict


def _load_data(cfg: ProxyConfig) -> tuple[LabelledImages, LabelledImages]:
    if cfg.dataset == "latents":  # decoder training, the other caller, needs the images themselves
        raise UserError("the latents dataset holds no images; use fashion-mnist or imagefolder", key="dataset")
    if cfg.dataset == "fashion-mnist":
        from snapgen.data import fashion_mnist

        return fashion_mnist.load("train", cfg.data_path), fashion_mnist.load("test", cfg.data_path)
    from snapgen.data.imagefolder import load_imagefolder

    data = load_imagefolder(cfg.data_path, cfg.resolution, cfg.class_map)
    return data, data  # the real images are their own reference set


def _reference_size(cfg: ProxyConfig) -> int | None:
    """Images in the decoded-shard-latents reference (None where the reference is real images)."""
    return cfg.num_samples if cfg.dataset == "latents" and not cfg.reference_path else None


def _asset_key(cfg: ProxyConfig) -> tuple:
    return (cfg.dataset, cfg.data_path, cfg.class_map, cfg.reference_path, _reference_size(cfg), cfg.resolution,
            cfg.autoencoder, cfg.ae, cfg.classifier, cfg.text_encoder, cfg.prompt_template, cfg.null_condition,
            cfg.metric, cfg.inception_weights)


_ASSETS: dict[tuple, "ProxyAssets"] = {}


@contextlib.contextmanager
def _torch_threads(n: int):
    """torch's intra-op CPU threads set to ``n`` (0: unchanged) inside the block."""
    prev = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def prepare_assets(cfg: ProxyConfig) -> ProxyAssets:
    """Build or load (from the on-disk cache) everything a proxy run needs besides the model;
    kept in memory for the process (last two configurations), so a study's trials share them."""
    from snapgen.cache import cache_root

    key = _asset_key(cfg) + (str(cache_root()),)
    if key not in _ASSETS:
        while len(_ASSETS) >= 2:
            _ASSETS.pop(next(iter(_ASSETS)))
        with _torch_threads(cfg.threads):  # a cold build (autoencoder, classifier) runs like the trials
            _ASSETS[key] = _build_assets(cfg)
    return _ASSETS[key]


@dataclass(frozen=True, eq=False)
class _Source:
    """What a dataset contributes to the assets."""

    latents: torch.Tensor  # (N, C, h, w) normalised training latents
    labels: torch.Tensor
    class_names: tuple[str, ...]
    codec: LatentCodec
    reference: torch.Tensor  # uint8 images at the proxy resolution
    reference_hash: str
    info: dict
    images: tuple[LabelledImages, LabelledImages] | None = None  # (train, test): fd-fmnist trains on them


def _image_source(cfg: ProxyConfig) -> _Source:
    """Fashion-MNIST or an ImageFolder: images encoded once (and cached) by the autoencoder."""
    train, test = _load_data(cfg)
    if cfg.autoencoder:
        codec = load_autoencoder(cfg.autoencoder, resolution=cfg.resolution)
    else:
        if cfg.ae.resolution != cfg.resolution:
            raise UserError(f"ae.resolution {cfg.ae.resolution} differs from resolution {cfg.resolution}",
                            key="ae.resolution")
        codec = proxy_autoencoder(cfg.ae, train, test)
    latents, latents_hit = cached_latents(codec, train)
    info = {"autoencoder": cfg.autoencoder or "embedded", "autoencoder_psnr_db": codec.report.get("psnr_db"),
            "autoencoder_cache_hit": codec.report.get("cache_hit"), "latents_cache_hit": latents_hit,
            "train_images": len(train),
            "reference": "fashion-mnist-test" if cfg.dataset == "fashion-mnist" else cfg.data_path}
    return _Source(latents=latents, labels=train.labels, class_names=train.class_names, codec=codec,
                   reference=to_uint8(codec.prepare(test.images)), reference_hash=test.content_hash, info=info,
                   images=(train, test))


def _latent_source(cfg: ProxyConfig) -> _Source:
    """Pre-encoded shards: they are the training latents (no image is loaded or encoded); the
    autoencoder only decodes: the samples and, without reference_path, the reference."""
    from snapgen.data.imagefolder import load_imagefolder

    shards = load_latent_shards(cfg.data_path)
    codec = load_autoencoder(cfg.autoencoder, resolution=cfg.resolution)
    _check_latent_space(shards, codec, cfg)
    latents = shards.normalized()
    if cfg.reference_path:
        real = load_imagefolder(cfg.reference_path, cfg.resolution)
        reference, ref_hash, ref_name = to_uint8(codec.prepare(real.images)), real.content_hash, cfg.reference_path
    else:
        # No real images: the reference is the decode of a fixed, evenly spaced slice of the shards (every
        # class of a class-sorted encode is represented), so samples and reference pass the same decoder.
        idx = torch.linspace(0, len(latents) - 1, min(_reference_size(cfg), len(latents))).round().long()
        reference = to_uint8(codec.decode(latents[idx]))
        ref_hash, ref_name = combine(shards.content_hash, codec.key, str(len(idx))), "decoded-shard-latents"
    info = {"autoencoder": cfg.autoencoder, "train_images": len(shards), "reference": ref_name,
            "reference_images": len(reference)}
    return _Source(latents=latents, labels=shards.labels, class_names=shards.class_names, codec=codec,
                   reference=reference, reference_hash=ref_hash, info=info)


def _check_latent_space(shards: LatentSet, codec: LatentCodec, cfg: ProxyConfig) -> None:
    """The shards must be in the autoencoder's latent space: channels, normalisation, decoded size."""
    c, h, w = shards.latents.shape[1:]
    if c != codec.latent_channels:
        raise UserError(f"the latent shards have {c} channels but the autoencoder has {codec.latent_channels}; "
                        "encode the shards with this autoencoder", key="autoencoder")
    meta = str(Path(cfg.data_path).expanduser() / "meta.json")
    for name in ("scaling_factor", "shift_factor"):  # LatentSet.normalized() must invert LatentCodec.decode
        theirs, ours = getattr(shards, name), getattr(codec, name)
        if not math.isclose(theirs, ours, rel_tol=1e-6, abs_tol=1e-9):
            raise DataError(f"{name} {theirs} differs from the autoencoder's {ours} (shards from another "
                            "autoencoder?)", file=meta, key=name)
    if h != w:
        raise DataError(f"the proxy needs square latents, the shards hold {h}x{w}", file=meta)
    if h * codec.downsample != cfg.resolution:
        raise UserError(f"the latent shards are {h}x{w}, which the autoencoder decodes to "
                        f"{h * codec.downsample}x{w * codec.downsample}; set resolution to {h * codec.downsample}",
                        key="resolution")


def _inception_ident(cfg: ProxyConfig) -> str:
    """The Inception weights' identity for the reference statistics' cache key."""
    from snapgen.cache import hash_file

    if cfg.inception_weights is None:
        return "torch-fidelity-default"
    if not Path(cfg.inception_weights).is_file():
        raise UserError("Inception weights file not found", file=cfg.inception_weights, key="inception_weights")
    return hash_file(cfg.inception_weights)


def _build_assets(cfg: ProxyConfig) -> ProxyAssets:
    src = _latent_source(cfg) if cfg.dataset == "latents" else _image_source(cfg)
    cond = class_conditioning(src.class_names, template=cfg.prompt_template, encoder=cfg.text_encoder,
                              null=cfg.null_condition)
    info = {**src.info, "latent_shape": list(src.latents.shape[1:]), "text_encoder": cfg.text_encoder}
    if cfg.metric == "fd-fmnist":
        from snapgen.metrics.classifier import metric_classifier

        weights, report = metric_classifier(cfg.classifier, *src.images)
        info.update(classifier_accuracy=report["test_accuracy"], classifier_cache_hit=report["cache_hit"])
        metric_weights = str(weights)
        ref_key = combine(src.reference_hash, report["key"], str(cfg.resolution))
    else:
        metric_weights = cfg.inception_weights
        ref_key = combine(src.reference_hash, _inception_ident(cfg), str(cfg.resolution))
    return ProxyAssets(latents=src.latents, labels=src.labels, class_names=src.class_names, context=cond.context,
                       pooled=cond.pooled, codec=src.codec, reference=src.reference, reference_key=ref_key,
                       metric_weights=metric_weights, info=info)


def proxy_spec(spec: ArchSpec, cfg: ProxyConfig, *, latent_channels: int, context_dim: int) -> ArchSpec:
    """``spec`` scaled to the proxy size, wired to the proxy latent space and text encoder."""
    s = spec.scaled(cfg.width_mult, cfg.depth_mult, head_dim=cfg.head_dim, norm_groups=cfg.norm_groups,
                    name=f"{spec.name}-proxy")
    return replace(s, latent_channels=latent_channels, context_dim=context_dim,
                   pooled_dim=context_dim if spec.pooled_dim else 0).validate()


# ---- evaluation ---------------------------------------------------------------------------------
def generate(model, assets: ProxyAssets, cfg: ProxyConfig, *, seed: int, num_samples: int | None = None,
             batch_size: int = 250) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-balanced samples (labels 0..K-1 cycling) as uint8 images, with their labels."""
    n = num_samples or cfg.num_samples
    k = len(assets.class_names)
    labels = torch.arange(n) % k
    g = torch.Generator().manual_seed(seed)
    c, h, w = assets.latents.shape[1:]
    noise = torch.randn(n, c, h, w, generator=g)
    use_pooled = model.spec.pooled_dim > 0
    out = []
    for i in range(0, n, batch_size):
        y = labels[i:i + batch_size]
        cond = {"encoder_hidden_states": assets.context[y]}
        unc = {"encoder_hidden_states": assets.context[-1:].expand(len(y), -1, -1)}
        if use_pooled:
            cond["pooled"] = assets.pooled[y]
            unc["pooled"] = assets.pooled[-1:].expand(len(y), -1)
        z = sample(model, noise[i:i + batch_size], cond, unc, steps=cfg.sample_steps, cfg_scale=cfg.cfg_scale,
                   method=cfg.sampler)
        if not torch.isfinite(z).all():
            raise TrainingError("sampling produced non-finite latents; the trained model is broken")
        out.append(z)
    images = assets.codec.decode(torch.cat(out))
    return to_uint8(images), labels


def evaluate(model, assets: ProxyAssets, cfg: ProxyConfig, *, seed: int) -> tuple[float, torch.Tensor, torch.Tensor]:
    from snapgen.metrics.fidelity import frechet_distance

    images, labels = generate(model, assets, cfg, seed=seed)
    value = frechet_distance(images, assets.reference, metric=cfg.metric, weights_path=assets.metric_weights,
                             reference_key=assets.reference_key)
    if not math.isfinite(value):
        raise TrainingError(f"{cfg.metric} is not finite ({value}); the samples are degenerate")
    return value, images, labels


# ---- the run ------------------------------------------------------------------------------------
def run_proxy(spec: ArchSpec, cfg: ProxyConfig = ProxyConfig(), *, seed: int = 0,
              on_eval: Callable[[int, float], bool | None] | None = None) -> ProxyResult:
    """Train ``spec`` at proxy size for ``cfg.steps`` steps and return its quality metric (lower is better)."""
    cfg.validate()
    with _torch_threads(cfg.threads):
        return _run(spec, cfg, seed, on_eval)


def _run(spec, cfg, seed, on_eval) -> ProxyResult:
    from tqdm import tqdm

    from snapgen.unet import SnapGenUNet

    t_start = time.perf_counter()
    assets = prepare_assets(cfg)
    pspec = proxy_spec(spec, cfg, latent_channels=assets.latents.shape[1], context_dim=assets.context.shape[-1])
    torch.manual_seed(seed)
    model = SnapGenUNet.from_spec(pspec)
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)))
    g = torch.Generator().manual_seed(seed)
    latents, labels, ctx_table = assets.latents, assets.labels, assets.context
    pooled_table = assets.pooled if pspec.pooled_dim else None
    null = len(assets.class_names)
    n, b = len(latents), cfg.batch_size
    eval_steps = set(cfg.eval_steps())
    evaluations: list[tuple[int, float]] = []
    train_s = eval_s = 0.0
    stopped = False
    loss = torch.tensor(float("nan"))
    step = 0
    images = sample_labels = None
    samples_by_step: dict[int, torch.Tensor] = {}

    def check(loss):
        if not torch.isfinite(loss):
            raise TrainingError(f"non-finite loss ({loss.item()}) at step {step}; lower lr (now {cfg.lr}) "
                                f"or check the architecture")

    def run_eval():
        nonlocal eval_s, images, sample_labels
        t0 = time.perf_counter()
        value, images, sample_labels = evaluate(ema.model if ema else model, assets, cfg, seed=seed + 1)
        eval_s += time.perf_counter() - t0
        evaluations.append((step, value))
        samples_by_step[step] = images
        return value

    bar = tqdm(total=cfg.steps, desc=f"proxy {spec.name}", file=sys.stderr, disable=not cfg.progress,
               mininterval=1.0, leave=False)
    t0 = time.perf_counter()
    model.train()
    while step < cfg.steps:
        # --- one rectified-flow step (the throughput bench compares exactly this to a bare loop) ---
        idx = torch.randint(n, (b,), generator=g)
        x0 = latents[idx]
        y = drop_condition(labels[idx], cfg.p_uncond, null, generator=g)
        t = logit_normal(b, mean=cfg.logit_mean, std=cfg.logit_std, generator=g)
        noise = torch.randn(x0.shape, generator=g)
        cond = {"encoder_hidden_states": ctx_table[y]}
        if pooled_table is not None:
            cond["pooled"] = pooled_table[y]
        pred = model(interpolate(x0, noise, t), t * 1000, **cond, return_dict=False)[0]
        loss = F.mse_loss(pred, velocity_target(x0, noise))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if ema is not None:
            ema.update(model)
        step += 1
        if step % 25 == 0:  # a host sync every 25 steps, not every step
            check(loss)
            bar.update(25)
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if step in eval_steps:
            check(loss)
            train_s += time.perf_counter() - t0
            value = run_eval()
            stop = False
            if on_eval is not None:
                try:
                    stop = bool(on_eval(step, value))
                except StopTrial:
                    stop = True
            t0 = time.perf_counter()
            if stop:
                stopped = True
                break
    train_s += time.perf_counter() - t0
    bar.close()
    if step > 0:
        check(loss)
    if not stopped:
        value = run_eval()
        if on_eval is not None:
            try:
                on_eval(step, value)
            except StopTrial:
                pass
    seconds = time.perf_counter() - t_start
    return ProxyResult(
        metric=cfg.metric, value=evaluations[-1][1], steps=step, seconds=seconds, evaluations=tuple(evaluations),
        spec=pspec, params=sum(p.numel() for p in model.parameters()), train_seconds=train_s, eval_seconds=eval_s,
        images_per_second=(step * b / train_s) if train_s > 0 else 0.0,
        final_loss=float(loss.detach()) if step else float("nan"), stopped_early=stopped, assets=dict(assets.info),
        samples=images, sample_labels=sample_labels, samples_by_step=samples_by_step)
