"""The ``snapgen train`` configuration: one structured dataclass, loaded by :mod:`snapgen.config` (a YAML
file, Hydra overrides ``key=v`` / ``+key=v`` / ``~key``; ``-m`` sweeps). Unknown keys, wrong types, values
out of a field's declared range or choices are one line naming the file (or ``<command line>``) and key.

``arch`` holds a full-size :class:`~snapgen.spec.ArchSpec` mapping (what ``archsearch promote``
writes); it is scaled to the training size by the ``proxy`` section's ``width_mult`` /
``depth_mult`` exactly as the proxy does (set both to 1 for a full-size run). ``proxy`` holds
:class:`snapgen.proxy.ProxyConfig` fields: data, autoencoder, text encoder, metric and sampling
settings are the proxy's, reused as they are.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from snapgen.config import bounds, keys_of, one_of, structured
from snapgen.errors import UserError

STAGES = ("base", "kd", "step_distill", "decoder")
BACKBONES = ("snapgen-unet", "sd3-transformer")
KD_MODES = ("timestep_aware", "linear", "none")


def _proxy_schema():
    from snapgen.proxy import ProxyConfig

    return (ProxyConfig,)


@dataclass
class TrainSection:
    steps: int = field(default=300, metadata=bounds(ge=1))
    batch_size: int = field(default=64, metadata=bounds(ge=1))  # global batch (split over DDP ranks)
    lr: float = field(default=1e-3, metadata=bounds(gt=0))
    warmup_steps: int = field(default=10, metadata=bounds(ge=0))
    weight_decay: float = field(default=0.0, metadata=bounds(ge=0))
    grad_clip: float = field(default=1.0, metadata=bounds(ge=0))  # 0: off
    ema_decay: float = field(default=0.99, metadata=bounds(ge=0, lt=1))  # 0: no EMA
    p_uncond: float = field(default=0.1, metadata=bounds(ge=0, lt=1))
    log_every: int = field(default=10, metadata=bounds(ge=1))
    ckpt_every: int = field(default=100, metadata=bounds(ge=0))  # 0: only at the end
    keep_checkpoints: int = field(default=2, metadata=bounds(ge=1))
    grad_accum: int = field(default=1, metadata=bounds(ge=1))  # micro-batches per optimiser step
    threads: int = field(default=1, metadata=bounds(ge=0))  # torch CPU threads (0: leave torch's default)
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
    steps: int = field(default=800, metadata=bounds(ge=1))
    batch_size: int = field(default=32, metadata=bounds(ge=1))
    lr: float = field(default=1e-3, metadata=bounds(gt=0))
    sd3: Dict[str, Any] = field(default_factory=dict)  # SD3Transformer2DModel config overrides


@dataclass
class KDSection:
    mode: str = field(default="timestep_aware", metadata=one_of(KD_MODES, what="mode"))
    out_weight: float = field(default=1.0, metadata=bounds(ge=0))  # output-level (teacher velocity) weight:
    feat_weight: float = field(default=0.5, metadata=bounds(ge=0))  # the linear weight, or the timestep-aware
    # scale's multiplier; same for feature level
    features: List[str] = field(default_factory=lambda: ["mid", "up.1"])  # student stages matched
    teacher_features: List[int] = field(default_factory=lambda: [-1, 1])  # teacher block index per student stage
    bins: int = field(default=10, metadata=bounds(ge=1))  # timestep bins of the running loss magnitudes
    momentum: float = field(default=0.95, metadata=bounds(ge=0, lt=1))  # EMA of the per-bin magnitudes
    max_scale: float = field(default=20.0, metadata=bounds(gt=0))  # clamp of a timestep-aware weight


@dataclass
class StepDistillSection:
    student_steps: int = field(default=4, metadata=bounds(ge=1))  # 4 or 8 sampling steps (the paper)
    init: Optional[str] = None  # output_dir (or checkpoint) of a base/kd run to start from; required
    teacher_substeps: int = field(default=8, metadata=bounds(ge=1))  # teacher Euler steps per student step
    kd_weight: float = field(default=1.0, metadata=bounds(ge=0))
    adv_weight: float = field(default=0.1, metadata=bounds(ge=0))
    disc_lr: float = field(default=2e-4, metadata=bounds(gt=0))
    disc_feature: int = -1  # index of the frozen backbone's (teacher's) feature map the discriminator head reads
    adv_start: int = field(default=0, metadata=bounds(ge=0))  # step at which the adversarial term starts


@dataclass
class DecoderTrainSection:
    arch: Dict[str, Any] = field(default_factory=lambda: {
        # measured (docs/train.md): -0.23 dB against the baseline decoder at 38% of its GFLOPs
        "latent_channels": 4, "out_channels": 1, "channels": [32, 16, 8], "blocks": [1, 1, 1],
        "norm": ["groupnorm", "groupnorm", "none"], "conv": "regular", "norm_groups": 8})
    baseline: bool = False  # train the proxy autoencoder's own decoder architecture instead (the baseline)
    mse_weight: float = field(default=1.0, metadata=bounds(ge=0))
    lpips_weight: float = field(default=0.1, metadata=bounds(ge=0))  # where lpips and its weights are present
    adv_weight: float = field(default=0.05, metadata=bounds(ge=0))
    adv_start: int = field(default=100, metadata=bounds(ge=0))
    disc_lr: float = field(default=2e-4, metadata=bounds(gt=0))


@dataclass
class EvalSection:
    num_samples: Optional[int] = field(default=None, metadata=bounds(ge=1))  # None: the proxy's (500)
    sample_steps: Optional[int] = field(default=None, metadata=bounds(ge=1))  # None: the proxy's (8);
    # step_distill: student_steps
    cfg_scale: Optional[float] = field(default=None, metadata=bounds(ge=0))  # None: the proxy's
    seed: Optional[int] = None  # sampling seed; None: seed + 1 (the proxy's convention)
    at_end: bool = True


@dataclass
class TrainConfig:
    stage: str = field(default="base", metadata=one_of(STAGES, what="stage"))
    output_dir: str = "runs/train"
    seed: int = 0  # the training seed (`snapgen train -m seed=0,1,2 ...` sweeps it)
    backbone: str = field(default="snapgen-unet", metadata=one_of(BACKBONES, what="backbone"))  # snapgen-unet (arch) |
    # sd3-transformer (the embedded teacher family)
    arch: Dict[str, Any] = field(default_factory=dict)  # full-size ArchSpec mapping
    sd3: Dict[str, Any] = field(default_factory=dict)  # SD3Transformer2DModel config (backbone sd3-transformer)
    proxy: Dict[str, Any] = field(default_factory=dict, metadata=keys_of(_proxy_schema))  # ProxyConfig fields
    train: TrainSection = field(default_factory=TrainSection)
    teacher: TeacherSection = field(default_factory=TeacherSection)
    kd: KDSection = field(default_factory=KDSection)
    step_distill: StepDistillSection = field(default_factory=StepDistillSection)
    decoder: DecoderTrainSection = field(default_factory=DecoderTrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    provenance: Dict[str, Any] = field(default_factory=dict)  # written by `archsearch promote`


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """YAML file (or None: the defaults) + Hydra overrides -> a checked :class:`TrainConfig`."""
    from snapgen.config import load

    return validate(load(TrainConfig, path, overrides, what="training config"), None if path is None else str(path))


def validate(cfg: TrainConfig, file: str | None = None) -> TrainConfig:
    """The rules between fields (each field's own range and choices are checked as it loads)."""
    def err(key, msg):
        return UserError(msg, file=file, key=key)

    cfg = structured(TrainConfig, to_dict(cfg), file=file)  # a config built in code is checked alike
    if cfg.train.batch_size % cfg.train.grad_accum:
        raise err("train.grad_accum", f"train.batch_size {cfg.train.batch_size} is not divisible by it")
    if cfg.train.precision == "fp16" and (cfg.stage == "decoder" or cfg.stage == "step_distill"):
        raise err("train.precision", f"fp16 scales the main loss only; stage {cfg.stage}'s discriminator would train "
                  "unscaled: use bf16 or fp32")
    if cfg.stage in ("base", "kd", "step_distill") and cfg.backbone == "snapgen-unet" and not cfg.arch:
        raise err("arch", "the architecture (an ArchSpec mapping) is required; `archsearch promote` writes it")
    if cfg.stage != "base" and cfg.backbone != "snapgen-unet":
        raise err("backbone", f"stage {cfg.stage} trains the SnapGen UNet; backbone sd3-transformer is for stage base")
    if cfg.stage == "step_distill" and not cfg.step_distill.init:
        raise err("step_distill.init", "step distillation starts from a trained student: give the output_dir "
                  "of a base or kd run")
    if cfg.stage == "kd" and len(cfg.kd.features) != len(cfg.kd.teacher_features):
        raise err("kd.teacher_features", f"needs one teacher block per student feature ({len(cfg.kd.features)})")
    for f in cfg.kd.features:
        if f != "mid" and not (f.startswith("up.") and f[3:].isdigit()):
            raise err("kd.features", f"unknown feature {f!r}; allowed: mid, up.<stage index>")
    pc = proxy_config(cfg, file)  # checks the proxy keys
    if cfg.arch and cfg.backbone == "snapgen-unet" and cfg.stage != "decoder":
        from snapgen.spec import ArchSpec

        try:
            spec = ArchSpec.from_dict(dict(cfg.arch), file=file)
        except UserError as e:
            raise UserError(e.message, file=file, key=f"arch.{e.key}" if e.key else "arch") from None
        pc.check_latent_size(spec, file=file)
    return cfg


# ProxyConfig keys that are the training recipe, budget and runtime: `snapgen train` takes them from
# its train section (so a run and the proxy share one recipe), and refuses them in `proxy:`. The evaluation
# keys may be given in `eval:` or in `proxy:`, not both (neither silently overrides the other).
TRAIN_OWNED = ("steps", "batch_size", "lr", "warmup_steps", "weight_decay", "grad_clip", "ema_decay", "p_uncond",
               "grad_accum", "device", "precision", "compile", "threads", "progress")
EVAL_KEYS = ("num_samples", "sample_steps", "cfg_scale")


def proxy_config(cfg: TrainConfig, file: str | None = None):
    """The :class:`snapgen.proxy.ProxyConfig` of this run: data, autoencoder, text, metric and sampling
    from ``proxy:``; the recipe, budget and device from ``train:`` (what the proxy trains with)."""
    from snapgen.proxy import ProxyConfig

    for k in cfg.proxy:
        if k in TRAIN_OWNED:
            raise UserError(f"the training recipe and budget come from the train section: set train.{k}",
                            file=file, key=f"proxy.{k}")
        if k in EVAL_KEYS and getattr(cfg.eval, k) is not None:
            raise UserError(f"proxy.{k} is set too: give it once (eval.{k} or proxy.{k})", file=file, key=f"eval.{k}")
    pc = structured(ProxyConfig, dict(cfg.proxy), file=file, prefix="proxy.")
    t = cfg.train
    over = {k: getattr(t, k) for k in TRAIN_OWNED if k != "progress"}
    over["progress"] = False
    if cfg.eval.num_samples is not None:
        over["num_samples"] = cfg.eval.num_samples
    if cfg.eval.cfg_scale is not None:
        over["cfg_scale"] = float(cfg.eval.cfg_scale)
    steps = cfg.eval.sample_steps
    if steps is None and cfg.stage == "step_distill" and "sample_steps" not in cfg.proxy:
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
