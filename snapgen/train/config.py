"""The ``snapgen train`` configuration: one structured dataclass, loaded from YAML with OmegaConf and
overridden by ``key=value`` dotlist arguments (the Hydra/OmegaConf grammar). A key that the
dataclass does not have is one clear line naming the allowed keys; so is a wrong type.

``arch`` holds a full-size :class:`~snapgen.spec.ArchSpec` mapping (what ``archsearch promote``
writes); it is scaled to the training size by the ``proxy`` section's ``width_mult`` /
``depth_mult`` exactly as the proxy does (set both to 1 for a full-size run). ``proxy`` holds
:class:`snapgen.proxy.ProxyConfig` fields: data, autoencoder, text encoder, metric and sampling
settings are the proxy's, reused as they are.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from snapgen.dataclass_config import dataclass_from_dict
from snapgen.errors import UserError

STAGES = ("base", "kd", "step_distill", "decoder")
BACKBONES = ("snapgen-unet", "sd3-transformer")
KD_MODES = ("timestep_aware", "linear", "none")


@dataclass
class TrainSection:
    steps: int = 300
    batch_size: int = 64  # global batch (split over DDP ranks)
    lr: float = 1e-3
    warmup_steps: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # 0: off
    ema_decay: float = 0.99  # 0: no EMA
    p_uncond: float = 0.1
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 100  # 0: only at the end
    keep_checkpoints: int = 2
    grad_accum: int = 1  # micro-batches per optimiser step (batch_size is the whole step's)
    threads: int = 1  # torch CPU threads (0: leave torch's default)
    device: str = "auto"  # auto (CUDA, then MPS, then CPU) | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 elsewhere) | fp32 | bf16 | fp16
    compile: bool = False  # torch.compile the trained network
    progress: bool = True


@dataclass
class TeacherSection:
    path: Optional[str] = None  # diffusers model dir / hub id, or a `snapgen train` output_dir; None: embedded
    subfolder: Optional[str] = None  # e.g. "transformer" inside a pipeline repository
    # the embedded default teacher: a larger SD3-style transformer trained on the proxy by `snapgen train`
    # itself (stage=base, backbone=sd3-transformer) and cached by its configuration
    steps: int = 800
    batch_size: int = 32
    lr: float = 1e-3
    sd3: Dict[str, Any] = field(default_factory=dict)  # SD3Transformer2DModel config overrides


@dataclass
class KDSection:
    mode: str = "timestep_aware"  # timestep_aware | linear | none
    out_weight: float = 1.0  # output-level (teacher velocity) weight: the linear weight, or the
    feat_weight: float = 0.5  #   timestep-aware scale's multiplier; same for feature level
    features: List[str] = field(default_factory=lambda: ["mid", "up.1"])  # student stages matched
    teacher_features: List[int] = field(default_factory=lambda: [-1, 1])  # teacher block index per student stage
    bins: int = 10  # timestep bins of the running loss magnitudes
    momentum: float = 0.95  # EMA of the per-bin magnitudes
    max_scale: float = 20.0  # clamp of a timestep-aware weight


@dataclass
class StepDistillSection:
    student_steps: int = 4  # 4 or 8 sampling steps
    init: Optional[str] = None  # output_dir (or checkpoint) of a base/kd run to start from; required
    teacher_substeps: int = 8  # teacher Euler steps per student step: the few-step teacher's target
    kd_weight: float = 1.0
    adv_weight: float = 0.1
    disc_lr: float = 2e-4
    disc_feature: int = -1  # index of the frozen backbone's (teacher's) feature map the discriminator head reads
    adv_start: int = 0  # step at which the adversarial term starts


@dataclass
class DecoderTrainSection:
    arch: Dict[str, Any] = field(default_factory=lambda: {
        # measured (docs/train.md): -0.23 dB against the baseline decoder at 38% of its GFLOPs
        "latent_channels": 4, "out_channels": 1, "channels": [32, 16, 8], "blocks": [1, 1, 1],
        "norm": ["groupnorm", "groupnorm", "none"], "conv": "regular", "norm_groups": 8})
    baseline: bool = False  # train the proxy autoencoder's own decoder architecture instead (the baseline)
    mse_weight: float = 1.0
    lpips_weight: float = 0.1  # used only where the lpips package and its weights are present
    adv_weight: float = 0.05
    adv_start: int = 100
    disc_lr: float = 2e-4


@dataclass
class EvalSection:
    num_samples: int = 500
    sample_steps: Optional[int] = None  # None: the proxy's (8); step_distill: student_steps
    cfg_scale: Optional[float] = None  # None: the proxy's
    seed: Optional[int] = None  # sampling seed; None: train.seed + 1 (the proxy's convention)
    at_end: bool = True


@dataclass
class TrainConfig:
    stage: str = "base"
    output_dir: str = "runs/train"
    backbone: str = "snapgen-unet"  # snapgen-unet (arch) | sd3-transformer (the embedded teacher family)
    arch: Dict[str, Any] = field(default_factory=dict)  # full-size ArchSpec mapping
    sd3: Dict[str, Any] = field(default_factory=dict)  # SD3Transformer2DModel config (backbone sd3-transformer)
    proxy: Dict[str, Any] = field(default_factory=dict)  # snapgen.proxy.ProxyConfig fields
    train: TrainSection = field(default_factory=TrainSection)
    teacher: TeacherSection = field(default_factory=TeacherSection)
    kd: KDSection = field(default_factory=KDSection)
    step_distill: StepDistillSection = field(default_factory=StepDistillSection)
    decoder: DecoderTrainSection = field(default_factory=DecoderTrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    provenance: Dict[str, Any] = field(default_factory=dict)  # written by `archsearch promote`


def _allowed(schema, prefix: str) -> str:
    return ", ".join(prefix + f.name for f in dataclasses.fields(schema))


def _schema_at(path: list[str]):
    cls = TrainConfig
    for p in path:
        hints = typing.get_type_hints(cls)
        t = hints.get(p)
        if t is None or not dataclasses.is_dataclass(t):
            return None
        cls = t
    return cls


def _omega_error(e, file: str | None) -> UserError:
    from omegaconf.errors import ConfigKeyError

    key = getattr(e, "full_key", None) or ""
    msg = str(e).splitlines()[0]
    if isinstance(e, ConfigKeyError) or "not in struct" in msg or "Key '" in msg:
        parts = key.split(".")
        schema = _schema_at(parts[:-1]) or TrainConfig
        prefix = ".".join(parts[:-1]) + "." if len(parts) > 1 else ""
        return UserError(f"unknown key; allowed: {_allowed(schema, prefix)}", file=file, key=key or None)
    return UserError(msg, file=file, key=key or None)


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """YAML file (or None: the defaults) + dotlist overrides -> a checked :class:`TrainConfig`."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from snapgen.spec import load_yaml

    base = OmegaConf.structured(TrainConfig)
    file = str(path) if path else None
    try:
        if path is not None:
            data = load_yaml(path)
            if data is None:
                data = {}
            if not isinstance(data, dict):
                raise UserError("a training config must be a mapping", file=file)
            base = OmegaConf.merge(base, OmegaConf.create(data))
        for ov in overrides:
            if "=" not in ov:
                raise UserError(f"override {ov!r} is not key=value", key=ov)
        if overrides:
            base = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
        cfg: TrainConfig = OmegaConf.to_object(base)
    except OmegaConfBaseException as e:
        raise _omega_error(e, file) from None
    return validate(cfg, file)


def validate(cfg: TrainConfig, file: str | None = None) -> TrainConfig:
    def err(key, msg):
        return UserError(msg, file=file, key=key)

    if cfg.stage not in STAGES:
        raise err("stage", f"unknown stage {cfg.stage!r}; allowed: {', '.join(STAGES)}")
    if cfg.backbone not in BACKBONES:
        raise err("backbone", f"unknown backbone {cfg.backbone!r}; allowed: {', '.join(BACKBONES)}")
    if cfg.kd.mode not in KD_MODES:
        raise err("kd.mode", f"unknown mode {cfg.kd.mode!r}; allowed: {', '.join(KD_MODES)}")
    for k in ("steps", "batch_size", "grad_accum"):
        if getattr(cfg.train, k) < 1:
            raise err(f"train.{k}", f"must be >= 1, got {getattr(cfg.train, k)}")
    if cfg.train.batch_size % cfg.train.grad_accum:
        raise err("train.grad_accum", f"train.batch_size {cfg.train.batch_size} is not divisible by it")
    if cfg.train.precision == "fp16" and (cfg.stage == "decoder" or cfg.stage == "step_distill"):
        raise err("train.precision", f"fp16 scales the main loss only; stage {cfg.stage}'s discriminator would train "
                  "unscaled: use bf16 or fp32")
    if cfg.stage in ("base", "kd", "step_distill") and cfg.backbone == "snapgen-unet" and not cfg.arch:
        raise err("arch", "the architecture (an ArchSpec mapping) is required; `archsearch promote` writes it")
    if cfg.stage != "base" and cfg.backbone != "snapgen-unet":
        raise err("backbone", f"stage {cfg.stage} trains the SnapGen UNet; backbone sd3-transformer is for stage base")
    if cfg.stage == "step_distill":
        if cfg.step_distill.student_steps < 1:
            raise err("step_distill.student_steps", "must be >= 1 (4 or 8 in the paper)")
        if not cfg.step_distill.init:
            raise err("step_distill.init", "step distillation starts from a trained student: give the output_dir "
                      "of a base or kd run")
    if cfg.stage == "kd" and len(cfg.kd.features) != len(cfg.kd.teacher_features):
        raise err("kd.teacher_features", f"needs one teacher block per student feature ({len(cfg.kd.features)})")
    for f in cfg.kd.features:
        if f != "mid" and not (f.startswith("up.") and f[3:].isdigit()):
            raise err("kd.features", f"unknown feature {f!r}; allowed: mid, up.<stage index>")
    proxy_config(cfg, file)  # checks the proxy keys
    return cfg


# ProxyConfig keys that are the training recipe, budget and runtime: `snapgen train` takes them from
# its train section (so a run and the proxy share one recipe), and refuses them in `proxy:`.
TRAIN_OWNED = ("steps", "batch_size", "lr", "warmup_steps", "weight_decay", "grad_clip", "ema_decay", "p_uncond",
               "grad_accum", "device", "precision", "compile", "threads", "progress")


def proxy_config(cfg: TrainConfig, file: str | None = None):
    """The :class:`snapgen.proxy.ProxyConfig` of this run: data, autoencoder, text, metric and sampling
    from ``proxy:``; the recipe, budget and device from ``train:`` (what the proxy trains with)."""
    from snapgen.proxy import ProxyConfig

    for k in cfg.proxy:
        if k in TRAIN_OWNED:
            raise UserError(f"the training recipe and budget come from the train section: set train.{k}",
                            file=file, key=f"proxy.{k}")
    pc = dataclass_from_dict(ProxyConfig, dict(cfg.proxy), file=file, prefix="proxy.")
    t = cfg.train
    over = {k: getattr(t, k) for k in TRAIN_OWNED if k != "progress"}
    over["progress"] = False
    if cfg.eval.num_samples:
        over["num_samples"] = cfg.eval.num_samples
    if cfg.eval.cfg_scale is not None:
        over["cfg_scale"] = float(cfg.eval.cfg_scale)
    steps = cfg.eval.sample_steps
    if steps is None and cfg.stage == "step_distill":
        steps = cfg.step_distill.student_steps
    if steps is not None:
        over["sample_steps"] = int(steps)
    pc = dataclasses.replace(pc, **over)
    try:
        return pc.validate()
    except UserError as e:
        section = "train" if e.key in TRAIN_OWNED else "proxy"
        raise UserError(e.message, file=file, key=f"{section}.{e.key}" if e.key else "proxy") from None


def to_yaml(cfg: TrainConfig) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: TrainConfig) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
