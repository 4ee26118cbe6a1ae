"""The ImageNet-style proxy: train an architecture small and short, sample, score.

``run_proxy(spec, cfg, seed=...)`` scales ``spec`` to proxy size, trains it with rectified flow on
cached autoencoder latents of the proxy data, or on pre-encoded latent shards (``dataset="latents"``,
written by ``snapgen encode``), with class prompts through a light text encoder as
cross-attention context), samples ``num_samples`` images with CFG and returns a Fréchet distance
(``fd-fmnist`` offline by default, Inception ``fid`` on real data). Intermediate evaluations are
reported through ``on_eval(step, value)``; returning True or raising :class:`StopTrial` stops the
run (multi-fidelity / successive-halving early stopping in the study layer).

The training is one run of the engine (:mod:`snapgen.train.engine`) with the recipe of ``snapgen
train stage=base`` (:func:`flow_recipe`, :func:`flow_engine`: both build their runs here), so a
study ranks architectures the way the final training trains them. It runs on ``cfg.device``
(``auto``: CUDA, then MPS, then the CPU): the latents and text embeddings move there once, the
sampling and the metric's feature extraction run there too.

Everything expensive that does not depend on the architecture — data, autoencoder, latents, text
embeddings, metric classifier, reference statistics — is built once, cached on disk by content
hash and kept in memory for the process (:func:`prepare_assets`).
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from snapgen.autoencoder import AEConfig, LatentCodec, cached_latents, load_autoencoder, proxy_autoencoder
from snapgen.cache import combine
from snapgen.config import bounds, check, one_of
from snapgen.data.base import LabelledImages, to_uint8
from snapgen.data.latents import LatentSet, load_latent_shards
from snapgen.errors import DataError, TrainingError, UserError
from snapgen.flow import sample
from snapgen.metrics.classifier import ClassifierConfig
from snapgen.spec import ArchSpec
from snapgen.text import DEFAULT_ENCODER, DEFAULT_TEMPLATE, class_conditioning
from snapgen.train.device import autocast_dtype, check_device, check_precision, describe, resolve_device
from snapgen.train.engine import Engine, Evaluate, Progress, Recipe
from snapgen.train.engine import StopTrial  # noqa: F401  (public here: snapgen.proxy.StopTrial)

DATASETS = ("fashion-mnist", "imagefolder", "latents")
PROXY_CONTEXT_DIM = 384  # the default text encoder's width (all-MiniLM-L6-v2): what specs are checked against before it loads


@dataclass(frozen=True)
class ProxyConfig:
    """Budget and settings of one proxy evaluation. The defaults are what a study uses. Ranges and
    choices are declared on the fields (:mod:`snapgen.config` checks them); :meth:`validate` adds the
    rules between fields."""

    # training budget
    steps: int = field(default=120, metadata=bounds(ge=0))
    batch_size: int = field(default=64, metadata=bounds(ge=1))
    lr: float = field(default=1e-3, metadata=bounds(gt=0))
    warmup_steps: int = field(default=10, metadata=bounds(ge=0))
    weight_decay: float = field(default=0.0, metadata=bounds(ge=0))
    grad_clip: float = field(default=1.0, metadata=bounds(ge=0))  # max global gradient norm (0: off)
    grad_accum: int = field(default=1, metadata=bounds(ge=1))  # micro-batches per optimiser step
    ema_decay: float = field(default=0.99, metadata=bounds(ge=0, lt=1))  # 0 disables EMA (raw weights)
    p_uncond: float = field(default=0.1, metadata=bounds(ge=0, lt=1))  # condition dropout for CFG
    logit_mean: float = 0.0
    logit_std: float = field(default=1.0, metadata=bounds(gt=0))
    # proxy size
    width_mult: float = field(default=0.125, metadata=bounds(gt=0))
    # of the depth above the first DEPTH_FLOOR blocks (snapgen.spec.ArchSpec.scaled)
    depth_mult: float = field(default=0.5, metadata=bounds(gt=0))
    # with 8 norm groups: channels in steps of 8, so every searched width stays distinct
    head_dim: int = field(default=8, metadata=bounds(ge=1))
    norm_groups: int = field(default=8, metadata=bounds(ge=1))
    # evaluation
    num_samples: int = field(default=500, metadata=bounds(ge=1))
    sample_steps: int = field(default=8, metadata=bounds(ge=1))
    sampler: str = field(default="euler", metadata=one_of(("euler", "heun"), what="sampler"))
    cfg_scale: float = field(default=2.0, metadata=bounds(ge=0))
    eval_every: int = field(default=0, metadata=bounds(ge=0))  # 0: no periodic intermediate evaluations
    eval_at: tuple[int, ...] = ()  # extra intermediate evaluation steps
    metric: str = field(default="fd-fmnist", metadata=one_of(("fd-fmnist", "fid"), what="metric"))  # fid: needs inception_weights
    inception_weights: str | None = None
    # data, latent space, conditioning
    dataset: str = field(default="fashion-mnist", metadata=one_of(DATASETS, what="dataset"))
    data_path: str | None = None  # Fashion-MNIST IDX dir, ImageFolder root or latent shard dir
    class_map: str | None = None  # ImageFolder class-name map (JSON)
    reference_path: str | None = None  # latents: ImageFolder of real images for fid (None: decoded shard latents)
    resolution: int = field(default=32, metadata=bounds(ge=1))
    autoencoder: str | None = None  # diffusers AutoencoderKL path / hub id; None: the embedded small one
    ae: AEConfig = field(default_factory=AEConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    text_encoder: str = DEFAULT_ENCODER
    prompt_template: str = DEFAULT_TEMPLATE
    null_condition: str = "empty"
    # runtime
    device: str = "auto"  # auto (CUDA, then MPS, then CPU) | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 elsewhere) | fp32 | bf16 | fp16 (+ grad scaler)
    compile: bool = False  # torch.compile the proxy model's training forward
    threads: int = field(default=1, metadata=bounds(ge=0))  # torch CPU threads (0: leave as is); 1: robust
    progress: bool = True

    def validate(self) -> "ProxyConfig":
        def err(key, msg):
            return UserError(msg, key=key)

        check(self, file=None)
        if self.batch_size % self.grad_accum:
            raise err("grad_accum", f"batch_size {self.batch_size} is not divisible by it")
        check_device(self.device, key="device")
        check_precision(self.precision, key="precision")
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

    def check_latent_size(self, spec: ArchSpec, *, file: str | None = None, key: str = "proxy.resolution") -> None:
        """The proxy's latents (the embedded autoencoder's) must divide by the UNet's downsampling factor."""
        if self.autoencoder or self.dataset == "latents":
            return  # the latent size is known once the autoencoder (or the shards) load
        f, down = 2 ** (len(self.ae.block_out_channels) - 1), 2 ** (spec.num_stages - 1)
        if self.resolution % (f * down):
            raise UserError(f"{self.resolution} px gives {self.resolution / f:g}x{self.resolution / f:g} latents (f={f}), "
                            f"which the UNet's {spec.num_stages} stages cannot downsample by {down}: use a resolution "
                            f"divisible by {f * down}", file=file, key=key)

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
    device: str  # where it ran: cpu, cuda:N (the physical GPU), mps
    precision: str  # fp32, bf16 or fp16 (autocast)
    samples: torch.Tensor | None = field(default=None, repr=False)  # uint8 images of the last evaluation
    sample_labels: torch.Tensor | None = field(default=None, repr=False)
    samples_by_step: dict = field(default_factory=dict, repr=False)  # step -> uint8 images of each evaluation

    def to_dict(self) -> dict:
        return {"metric": self.metric, "value": self.value, "steps": self.steps, "seconds": self.seconds,
                "evaluations": [list(e) for e in self.evaluations], "params": self.params,
                "train_seconds": self.train_seconds, "eval_seconds": self.eval_seconds,
                "images_per_second": self.images_per_second, "final_loss": self.final_loss,
                "stopped_early": self.stopped_early, "assets": self.assets, "device": self.device,
                "precision": self.precision, "spec": self.spec.to_dict()}


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
    _placed: dict = field(default_factory=dict, init=False, repr=False)  # device -> DeviceAssets (moved once)

    def on(self, device: torch.device) -> "DeviceAssets":
        """The training tensors and the autoencoder on ``device`` (moved on first use, then kept)."""
        key = str(device)
        if key not in self._placed:
            self.codec.to(device)
            self._placed.clear()  # one device per process: no second copy of the latents
            self._placed[key] = DeviceAssets(self.latents.to(device), self.labels.to(device),
                                             self.context.to(device), self.pooled.to(device))
        return self._placed[key]


@dataclass(frozen=True, eq=False)
class DeviceAssets:
    latents: torch.Tensor
    labels: torch.Tensor
    context: torch.Tensor
    pooled: torch.Tensor


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


# ---- the recipe (shared with `snapgen train`) ---------------------------------------------------
def flow_recipe(cfg: ProxyConfig) -> Recipe:
    """The optimisation recipe of a flow-matching run: the proxy's and every diffusion stage's of
    ``snapgen train`` (whose config supplies these fields from its train section)."""
    return Recipe(steps=cfg.steps, lr=cfg.lr, warmup_steps=cfg.warmup_steps, schedule="constant",
                  weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip, ema_decay=cfg.ema_decay,
                  accum=cfg.grad_accum)


def flow_engine(student, assets: ProxyAssets, cfg: ProxyConfig, *, seed: int, device: torch.device, objective,
                hooks=(), net=None, ema_of=None, timesteps=None, rank: int = 0, world: int = 1, reduce=None,
                lr_key: str = "lr") -> Engine:
    """The engine run that trains ``student`` (a :class:`snapgen.train.models.Student`) on the
    proxy's latents with ``objective``: the data stream, recipe, precision and compilation of
    ``cfg``. ``net`` (a DDP wrapper) and ``ema_of`` (the backbone) as :class:`Engine` takes them."""
    from snapgen.train.batches import FlowBatches

    on = assets.on(device)
    micro = cfg.batch_size // cfg.grad_accum
    batches = FlowBatches(on.latents, on.labels, on.context, on.pooled, batch_size=micro,
                          null=len(assets.class_names), p_uncond=cfg.p_uncond, seed=seed, device=device,
                          logit_mean=cfg.logit_mean, logit_std=cfg.logit_std, timesteps=timesteps, rank=rank,
                          world=world)
    return Engine(student, objective, batches, flow_recipe(cfg), device=device,
                  dtype=autocast_dtype(cfg.precision, device), compile=cfg.compile, net=net, ema_of=ema_of,
                  hooks=hooks, reduce=reduce, lr_key=lr_key, batch_size=micro // world)


# ---- evaluation ---------------------------------------------------------------------------------
def generate(model, assets: ProxyAssets, cfg: ProxyConfig, *, seed: int, num_samples: int | None = None,
             batch_size: int = 250, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-balanced samples (labels 0..K-1 cycling) as uint8 images, with their labels. The noise is
    drawn on the CPU (the same on every device), the sampling and decoding run on ``device``."""
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    on = assets.on(dev)
    n = num_samples or cfg.num_samples
    k = len(assets.class_names)
    labels = torch.arange(n) % k
    g = torch.Generator().manual_seed(seed)
    c, h, w = assets.latents.shape[1:]
    noise = torch.randn(n, c, h, w, generator=g).to(dev)
    y_all = labels.to(dev)
    use_pooled = model.spec.pooled_dim > 0
    out = []
    for i in range(0, n, batch_size):
        y = y_all[i:i + batch_size]
        cond = {"encoder_hidden_states": on.context[y]}
        unc = {"encoder_hidden_states": on.context[-1:].expand(len(y), -1, -1)}
        if use_pooled:
            cond["pooled"] = on.pooled[y]
            unc["pooled"] = on.pooled[-1:].expand(len(y), -1)
        out.append(sample(model, noise[i:i + batch_size], cond, unc, steps=cfg.sample_steps, cfg_scale=cfg.cfg_scale,
                          method=cfg.sampler))
    z = torch.cat(out)
    if not torch.isfinite(z).all():
        raise TrainingError("sampling produced non-finite latents; the trained model is broken")
    return to_uint8(assets.codec.decode(z)), labels


def evaluate(model, assets: ProxyAssets, cfg: ProxyConfig, *, seed: int,
             device: torch.device | None = None) -> tuple[float, torch.Tensor, torch.Tensor]:
    from snapgen.metrics.fidelity import frechet_distance

    images, labels = generate(model, assets, cfg, seed=seed, device=device)
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    value = frechet_distance(images, assets.reference, metric=cfg.metric, weights_path=assets.metric_weights,
                             reference_key=assets.reference_key, device=dev)
    if not math.isfinite(value):
        raise TrainingError(f"{cfg.metric} is not finite ({value}); the samples are degenerate")
    return value, images, labels


# ---- the run ------------------------------------------------------------------------------------
def run_proxy(spec: ArchSpec, cfg: ProxyConfig = ProxyConfig(), *, seed: int = 0,
              on_eval: Callable[[int, float], bool | None] | None = None, hooks=()) -> ProxyResult:
    """Train ``spec`` at proxy size for ``cfg.steps`` steps and return its quality metric (lower is
    better). ``hooks``: extra :class:`snapgen.train.engine.Hook` s of the training run."""
    cfg.validate()
    with _torch_threads(cfg.threads):
        return _run(spec, cfg, seed, on_eval, hooks)


def _run(spec, cfg, seed, on_eval, hooks) -> ProxyResult:
    from snapgen.train.models import Student
    from snapgen.train.objectives import FlowMatching
    from snapgen.unet import SnapGenUNet

    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    assets = prepare_assets(cfg)
    pspec = proxy_spec(spec, cfg, latent_channels=assets.latents.shape[1], context_dim=assets.context.shape[-1])
    torch.manual_seed(seed)
    net = SnapGenUNet.from_spec(pspec).to(device)
    samples: dict[int, tuple] = {}

    def score(engine) -> float:
        value, images, labels = evaluate(engine.ema.model if engine.ema else net, assets, cfg, seed=seed + 1,
                                         device=device)
        samples[engine.step] = (images, labels)
        return value

    ev = Evaluate(score, cfg.eval_steps(), on_eval)
    progress = Progress(cfg.steps, f"proxy {spec.name}", enabled=cfg.progress)
    engine = flow_engine(Student(net), assets, cfg, seed=seed, device=device, objective=FlowMatching(),
                         hooks=[progress, ev, *hooks], ema_of=net)
    engine.run()
    images, sample_labels = samples[engine.step]
    return ProxyResult(
        metric=cfg.metric, value=ev.evaluations[-1][1], steps=engine.step, seconds=time.perf_counter() - t_start,
        evaluations=tuple(ev.evaluations), spec=pspec, params=sum(p.numel() for p in net.parameters()),
        train_seconds=engine.train_seconds, eval_seconds=ev.seconds,
        images_per_second=(engine.step * cfg.batch_size / engine.train_seconds) if engine.train_seconds > 0 else 0.0,
        final_loss=engine.loss_value if engine.step else float("nan"), stopped_early=engine.stopped,
        assets=dict(assets.info), device=describe(device), precision=_precision_name(cfg.precision, device),
        samples=images, sample_labels=sample_labels, samples_by_step={k: v[0] for k, v in samples.items()})


def _precision_name(precision: str, device: torch.device) -> str:
    dtype = autocast_dtype(precision, device)
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
