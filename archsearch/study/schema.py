"""The study file: schema, loading, command-line overrides, validation.

A study is a YAML file (see ``studies/unet.yaml``) loaded by :mod:`snapgen.config` into the structured
schema below: Hydra's override grammar on the command line (``sampler.seed=3``,
``objectives.0.direction=maximize``, ``+sampler.options.n_startup_trials=4``, ``~timeout``; ``-m`` sweeps
``key=a,b``), unknown keys, wrong types, and the ranges and choices the fields declare are checked
there. Every mistake becomes one line ``error: FILE: KEY: MESSAGE``.
Everything is checked before anything is written (the space file, objective and constraint names,
the sampler, the proxy keys), so a bad study file never touches an existing study.
"""
from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml
from omegaconf import MISSING, OmegaConf

from snapgen.config import COMMAND_LINE, bounds, keys_of, one_of, structured
from snapgen.errors import UserError

SAMPLERS = ("tpe", "nsga2", "nsga3", "gp", "random", "grid")
DIRECTIONS = ("minimize", "maximize")
LATENCY_MODES = ("none", "table", "measure")
ABLATION_MODES = ("cumulative", "one_at_a_time")
CLI = COMMAND_LINE


def _proxy_schemas():
    from snapgen.proxy import ProxyConfig

    from archsearch.objectives.decoder_quality import DecoderProxyConfig

    return (ProxyConfig, DecoderProxyConfig)


def _proxy_field():
    """The ``proxy:`` section: fields of the UNet proxy or the decoder proxy (checked per kind at load)."""
    return field(default_factory=dict, metadata=keys_of(_proxy_schemas))


# ---- schema -------------------------------------------------------------------------------------
def _quality_metrics() -> list[str]:
    from archsearch.objectives import METRICS

    return [n for n, m in METRICS.items() if m.kind == "quality"]


@dataclass
class ObjectiveCfg:
    name: str = MISSING
    direction: Optional[str] = field(default=None, metadata=one_of(DIRECTIONS, what="direction"))  # default:
    # the metric's natural direction


@dataclass
class SamplerCfg:
    name: str = field(default="nsga2", metadata=one_of(SAMPLERS, what="sampler"))
    seed: int = 0
    options: Dict[str, Any] = field(default_factory=dict)  # extra keyword arguments of the sampler


@dataclass
class TargetCfg:
    """The full-size deployment target: params, GFLOPs and latency are measured here."""

    latent_size: int = field(default=128, metadata=bounds(ge=1))  # 1024 px with an f=8 autoencoder
    context_len: int = field(default=77, metadata=bounds(ge=1))
    sampling_steps: int = field(default=8, metadata=bounds(ge=1))  # e2e_latency_ms = sampling_steps x UNet latency + decoder latency
    unet: str = "snapgen-t2i"  # UNet preset (shipped UNet space) for e2e latency of decoder studies
    decoder: str = "tiny"  # decoder preset (shipped decoder space) for e2e latency of UNet studies


@dataclass
class LatencyCfg:
    mode: str = field(default="none", metadata=one_of(LATENCY_MODES, what="mode"))
    path: Optional[str] = None  # lookup table (mode: table), relative to the study file
    partner_path: Optional[str] = None  # table of the other network for e2e_latency_ms (else measured once)
    backend: str = "torch"
    device: str = "cpu"
    threads: Optional[int] = None  # a table must have been calibrated with these (None: any); measure mode uses them
    clock: Optional[str] = None  # wall | cpu
    allow_mismatch: bool = False  # use a table calibrated at another backend/device/threads/clock


@dataclass
class EarlyStoppingCfg:
    """Multi-objective successive halving on the proxy's intermediate quality (see early_stopping.py)."""

    enabled: bool = True  # the measurement behind this default: docs/study.md, "Early stopping, measured"
    eta: float = field(default=3.0, metadata=bounds(gt=1))  # keep the best 1/eta of the trials that reached a rung
    min_trials: int = field(default=4, metadata=bounds(ge=1))  # never stop before this many trials reached the rung


@dataclass
class HeartbeatCfg:
    interval: int = field(default=10, metadata=bounds(ge=1))  # seconds between heartbeats (RDB storages)
    grace_period: Optional[int] = field(default=None, metadata=bounds(ge=1))  # default 3 x interval: then a
    # silent trial is failed and re-run
    max_retry: int = field(default=2, metadata=bounds(ge=0))


@dataclass
class SyntheticCfg:
    """The ``synthetic`` quality metric: an analytic stand-in for the proxy (tests, demos)."""

    evals: int = field(default=4, metadata=bounds(ge=1))
    seconds_per_eval: float = field(default=0.0, metadata=bounds(ge=0))


@dataclass
class FidelityCfg:
    """When the run ends, re-evaluate its final front at a higher fidelity (archsearch/fidelity/in_study.py)."""

    budget_mult: float = field(default=4.0, metadata=bounds(ge=1))  # x the proxy's steps (synthetic: evals)
    seeds: int = field(default=2, metadata=bounds(ge=1))  # reference seeds: seed, seed+1, ...
    k: int = field(default=0, metadata=bounds(ge=0))  # extra non-front architectures, stratified by proxy quality
    overrides: Dict[str, Any] = field(default_factory=dict)  # keys of the proxy: (synthetic:) section
    workers: Optional[int] = field(default=None, metadata=bounds(ge=1))  # default: the study's workers


@dataclass
class StudyCfg:
    name: str = MISSING
    space: str = MISSING  # search-space file, relative to the study file
    objectives: List[ObjectiveCfg] = MISSING
    description: str = ""
    constraints: List[str] = field(default_factory=list)  # "METRIC <= NUMBER" (or <, >=, >)
    sampler: SamplerCfg = field(default_factory=SamplerCfg)
    n_trials: int = field(default=20, metadata=bounds(ge=1))
    timeout: Optional[float] = field(default=None, metadata=bounds(gt=0))  # seconds; no new trial starts after it
    workers: Any = 1  # local worker processes, or auto: one per visible GPU (1 without); --workers overrides
    seed: int = 0  # training seed of every proxy run (the same for all trials: a fair comparison)
    seeds: int = field(default=1, metadata=bounds(ge=1))  # quality scored over seed .. seed+N-1 (mean); archsearch/study/seeds.py
    proxy: Dict[str, Any] = _proxy_field()  # snapgen.proxy.ProxyConfig (or DecoderProxyConfig) fields
    target: TargetCfg = field(default_factory=TargetCfg)
    latency: LatencyCfg = field(default_factory=LatencyCfg)
    early_stopping: EarlyStoppingCfg = field(default_factory=EarlyStoppingCfg)
    reference_point: Dict[str, float] = field(default_factory=dict)  # hypervolume reference per objective
    storage: Optional[str] = None  # Optuna storage URL; default sqlite:///<output_dir>/study.db
    output_dir: Optional[str] = None  # default runs/<name>
    heartbeat: HeartbeatCfg = field(default_factory=HeartbeatCfg)
    synthetic: SyntheticCfg = field(default_factory=SyntheticCfg)
    fidelity: Optional[FidelityCfg] = None  # absent: no re-evaluation


@dataclass
class AblationStepCfg:
    name: str = MISSING
    preset: Optional[str] = None  # a preset of the space...
    arch: Dict[str, Any] = field(default_factory=dict)  # ...and/or fields merged over it
    description: str = ""
    paper: str = ""  # what the paper reports for this step (shown beside our numbers)


@dataclass
class AblationCfg:
    name: str = MISSING
    space: str = MISSING
    mode: str = field(default="cumulative", metadata=one_of(ABLATION_MODES, what="mode"))  # cumulative: each
    # step builds on the previous; one_at_a_time: each on base
    base: Optional[str] = None  # base preset (one_at_a_time; cumulative starts from the first step)
    steps: List[AblationStepCfg] = MISSING
    seeds: List[int] = field(default_factory=lambda: [0, 1])
    quality: str = field(default="fd-fmnist", metadata=one_of(_quality_metrics, what="quality metric"))
    description: str = ""
    proxy: Dict[str, Any] = _proxy_field()
    target: TargetCfg = field(default_factory=TargetCfg)
    latency: LatencyCfg = field(default_factory=LatencyCfg)
    synthetic: SyntheticCfg = field(default_factory=SyntheticCfg)
    output_dir: Optional[str] = None  # default runs/<name>


# ---- constraints ----------------------------------------------------------------------------------
_OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}
_CONSTRAINT_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_-]*)\s*(<=|>=|<|>)\s*([-+0-9.eE_]+)\s*$")


@dataclass(frozen=True)
class Constraint:
    metric: str
    op: str
    bound: float

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"

    def violation(self, value: float) -> float:
        """Optuna's convention: <= 0 feasible; > 0 by how much (relative to the bound) it is violated."""
        scale = abs(self.bound) or 1.0
        d = (value - self.bound) if self.op in ("<=", "<") else (self.bound - value)
        if self.op in ("<", ">") and d == 0:
            return 1e-12
        return d / scale


def parse_constraint(text: str, *, file: str, key: str, metrics) -> Constraint:
    m = _CONSTRAINT_RE.match(str(text))
    if not m:
        raise UserError(f"cannot parse constraint {text!r}; expected 'METRIC <= NUMBER' (or <, >=, >)", file=file,
                        key=key)
    metric, op, num = m.groups()
    if metric not in metrics:
        raise UserError(f"constraint on unknown metric {metric!r}; allowed: {', '.join(metrics)}", file=file, key=key)
    try:
        bound = float(num.replace("_", ""))
    except ValueError:
        raise UserError(f"{num!r} is not a number", file=file, key=key) from None
    return Constraint(metric, op, bound)


# ---- loading --------------------------------------------------------------------------------------
def load_config(path: str | Path, overrides: list[str] | None, schema):
    """YAML file + Hydra overrides -> a checked schema instance (see :func:`snapgen.config.load`)."""
    from snapgen.config import load

    return load(schema, path, overrides, what="study file")


def to_structured(data: dict, schema, *, file: str):
    """A plain mapping (a run's resolved study.yaml) -> a checked schema instance."""
    return structured(schema, data, file=file)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Hydra overrides on a schema-less settings mapping (``key=v`` may add a key)."""
    from snapgen.config import apply

    return apply(data, overrides)


@dataclass
class Study:
    """A validated study: its config, where it came from, and the objects it names."""

    cfg: StudyCfg
    file: Path
    space: Any  # archsearch.space.SearchSpace
    objectives: list  # list[ObjectiveCfg] with directions filled in
    constraints: list[Constraint]
    overrides: list[str]

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def objective_names(self) -> list[str]:
        return [o.name for o in self.objectives]

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def output_dir(self) -> Path:
        return Path(self.cfg.output_dir)

    @property
    def storage_url(self) -> str:
        return self.cfg.storage

    def needed_metrics(self) -> list[str]:
        out = list(self.objective_names)
        for c in self.constraints:
            if c.metric not in out:
                out.append(c.metric)
        return out

    def resolved_dict(self) -> dict:
        return OmegaConf.to_container(OmegaConf.structured(self.cfg), resolve=True)

    def resolved_yaml(self) -> str:
        return yaml.safe_dump(self.resolved_dict(), sort_keys=False)


def resolve_path(base: Path, p: str) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() else (base.parent / q)


def validate_common(cfg, file: str, study_path: Path, kind_metrics: dict):
    """Checks shared by studies and ablations: space file, latency, proxy keys."""
    from archsearch.space import SearchSpace

    space_path = resolve_path(study_path, cfg.space)
    if not space_path.is_file():
        raise UserError(f"search-space file not found: {space_path}", file=file, key="space")
    try:
        space = SearchSpace.load(space_path)
    except UserError as e:
        # The space file's own error, named as such.
        raise UserError(f"in space file {space_path}: {e.line()}", file=file, key="space") from None
    lat = cfg.latency
    if lat.mode == "table":
        if not lat.path:
            raise UserError("mode 'table' needs a table path", file=file, key="latency.path")
        tp = resolve_path(study_path, lat.path)
        if not tp.is_file():
            raise UserError(f"latency table not found: {tp}", file=file, key="latency.path")
        lat.path = str(tp)
    if lat.partner_path:
        pp = resolve_path(study_path, lat.partner_path)
        if not pp.is_file():
            raise UserError(f"latency table not found: {pp}", file=file, key="latency.partner_path")
        lat.partner_path = str(pp)
    if lat.mode == "table":
        from archsearch.objectives.latency import check_table

        check_table(lat, cfg.target, space, file=file)
    if space.kind == "decoder":
        from archsearch.objectives.decoder_quality import decoder_proxy_config

        decoder_proxy_config(cfg.proxy, file=file)
    else:
        from snapgen.spec import ArchSpec

        from archsearch.objectives.quality import proxy_config

        base = ArchSpec.from_dict(space.base_dict(), file=str(space_path), validate=False)
        down = 2 ** (base.num_stages - 1)
        if cfg.target.latent_size % down:
            raise UserError(f"{cfg.target.latent_size} is not divisible by {down}, the downsampling factor of the "
                            f"space's {base.num_stages}-stage UNet", file=file, key="target.latent_size")
        proxy_config(cfg.proxy, file=file).check_latent_size(base, file=file)
    return space


def load_study(path: str | Path, overrides: list[str] | None = None) -> Study:
    """Load and validate a study file; nothing is written."""
    from archsearch.objectives import METRICS, metrics_for

    path = Path(path)
    f = str(path)
    overrides = list(overrides or [])
    cfg: StudyCfg = load_config(path, overrides, StudyCfg)
    if not cfg.name or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", cfg.name):
        raise UserError(f"must be a non-empty name of letters, digits, '-', '_' or '.', got {cfg.name!r}", file=f,
                        key="name")
    space = validate_common(cfg, f, path, METRICS)
    available = metrics_for(space.kind)
    if not cfg.objectives:
        raise UserError(f"at least one objective is required; allowed: {', '.join(available)}", file=f,
                        key="objectives")
    seen = set()
    for i, o in enumerate(cfg.objectives):
        if o.name not in available:
            raise UserError(f"unknown objective {o.name!r} for a {space.kind} space; allowed: {', '.join(available)}",
                            file=f, key=f"objectives[{i}].name")
        if o.name in seen:
            raise UserError(f"objective {o.name!r} is listed twice", file=f, key=f"objectives[{i}].name")
        seen.add(o.name)
        if o.direction is None:
            o.direction = METRICS[o.name].direction
    constraints = [parse_constraint(c, file=f, key=f"constraints[{i}]", metrics=available)
                   for i, c in enumerate(cfg.constraints)]
    s = cfg.sampler
    if cfg.workers != "auto" and (isinstance(cfg.workers, bool) or not isinstance(cfg.workers, int) or cfg.workers < 1):
        raise UserError(f"must be an integer >= 1 or auto, got {cfg.workers!r}", file=f, key="workers")
    for k in cfg.reference_point:
        if k not in seen:
            raise UserError(f"{k!r} is not an objective of this study; allowed: {', '.join(seen)}", file=f,
                            key=f"reference_point.{k}")
    if "latency_ms" in seen or "e2e_latency_ms" in seen or any(c.metric.endswith("latency_ms") for c in constraints):
        if cfg.latency.mode == "none":
            raise UserError("a latency objective or constraint needs latency.mode table or measure", file=f,
                            key="latency.mode")
    if cfg.output_dir is None:
        cfg.output_dir = str(Path("runs") / cfg.name)
    if cfg.storage is None:
        cfg.storage = f"sqlite:///{Path(cfg.output_dir) / 'study.db'}"
    from archsearch.study.storage import check_storage_url

    check_storage_url(cfg.storage, file=f)
    # Make the sampler build (bad options fail here, before anything is written).
    from archsearch.study.samplers import make_sampler

    make_sampler(s, space, file=f)
    study = Study(cfg=cfg, file=path, space=space, objectives=list(cfg.objectives), constraints=constraints,
                  overrides=overrides)
    if cfg.fidelity is not None:
        from archsearch.fidelity.in_study import validate_section

        validate_section(study)
    return study


def load_ablation(path: str | Path, overrides: list[str] | None = None):
    from archsearch.objectives import METRICS

    path = Path(path)
    f = str(path)
    cfg: AblationCfg = load_config(path, list(overrides or []), AblationCfg)
    space = validate_common(cfg, f, path, METRICS)
    if len(cfg.seeds) < 1:
        raise UserError("at least one seed is required (2 or more for a spread)", file=f, key="seeds")
    if not cfg.steps:
        raise UserError("at least one step is required", file=f, key="steps")
    if cfg.mode == "one_at_a_time" and not cfg.base:
        raise UserError("one_at_a_time needs a base preset", file=f, key="base")
    if cfg.base and cfg.base not in space.presets:
        raise UserError(f"unknown preset {cfg.base!r}; allowed: {', '.join(space.presets)}", file=f, key="base")
    names = set()
    for i, st in enumerate(cfg.steps):
        if st.name in names:
            raise UserError(f"step {st.name!r} is listed twice", file=f, key=f"steps[{i}].name")
        names.add(st.name)
        if st.preset and st.preset not in space.presets:
            raise UserError(f"unknown preset {st.preset!r}; allowed: {', '.join(space.presets)}", file=f,
                            key=f"steps[{i}].preset")
        if i == 0 and cfg.mode == "cumulative" and not (st.preset or cfg.base):
            raise UserError("the first step of a cumulative ladder needs a preset (or give base)", file=f,
                            key=f"steps[{i}].preset")
    if cfg.output_dir is None:
        cfg.output_dir = str(Path("runs") / cfg.name)
    return cfg, space
