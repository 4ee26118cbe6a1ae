"""The study file: schema, loading, command-line overrides, validation.

A study is a YAML file (see ``studies/unet.yaml``). It is loaded safely, command-line overrides
``key=value`` (dotted paths, OmegaConf grammar: ``sampler.seed=3``, ``objectives.0.direction=maximize``)
are applied, and the result is merged into the structured schema below, so unknown keys and wrong
types are rejected by OmegaConf. Every mistake becomes one line ``error: FILE: KEY: MESSAGE``.
Everything is checked before anything is written (the space file, objective and constraint names,
the sampler, the proxy keys), so a bad study file never touches an existing study.
"""
from __future__ import annotations

import dataclasses
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from snapgen.errors import UserError
from snapgen.spec import load_yaml

SAMPLERS = ("tpe", "nsga2", "nsga3", "gp", "random", "grid")
DIRECTIONS = ("minimize", "maximize")
LATENCY_MODES = ("none", "table", "measure")
ABLATION_MODES = ("cumulative", "one_at_a_time")
CLI = "<command line>"


# ---- schema -------------------------------------------------------------------------------------
@dataclass
class ObjectiveCfg:
    name: str = MISSING
    direction: Optional[str] = None  # default: the metric's natural direction


@dataclass
class SamplerCfg:
    name: str = "nsga2"
    seed: int = 0
    options: Dict[str, Any] = field(default_factory=dict)  # extra keyword arguments of the sampler


@dataclass
class TargetCfg:
    """The full-size deployment target: params, GFLOPs and latency are measured here."""

    latent_size: int = 128  # 1024 px with an f=8 autoencoder
    context_len: int = 77
    sampling_steps: int = 8  # e2e_latency_ms = sampling_steps x UNet latency + decoder latency
    unet: str = "snapgen-t2i"  # UNet preset (shipped UNet space) for e2e latency of decoder studies
    decoder: str = "tiny"  # decoder preset (shipped decoder space) for e2e latency of UNet studies


@dataclass
class LatencyCfg:
    mode: str = "none"  # none | table | measure
    path: Optional[str] = None  # lookup table (mode: table), relative to the study file
    partner_path: Optional[str] = None  # table of the other network for e2e_latency_ms (else measured once)
    backend: str = "torch"
    device: str = "cpu"


@dataclass
class EarlyStoppingCfg:
    """Multi-objective successive halving on the proxy's intermediate quality (see early_stopping.py)."""

    enabled: bool = True  # the measurement behind this default: docs/study.md, "Early stopping, measured"
    eta: float = 3.0  # keep the best 1/eta of the trials that reached a rung
    min_trials: int = 4  # never stop before this many trials reached the rung


@dataclass
class HeartbeatCfg:
    interval: int = 10  # seconds between heartbeats of a running trial (RDB storages)
    grace_period: Optional[int] = None  # default 3 x interval: then a silent trial is failed and re-run
    max_retry: int = 2


@dataclass
class SyntheticCfg:
    """The ``synthetic`` quality metric: an analytic stand-in for the proxy (tests, demos)."""

    evals: int = 4
    seconds_per_eval: float = 0.0


@dataclass
class StudyCfg:
    name: str = MISSING
    space: str = MISSING  # search-space file, relative to the study file
    objectives: List[ObjectiveCfg] = MISSING
    description: str = ""
    constraints: List[str] = field(default_factory=list)  # "METRIC <= NUMBER" (or <, >=, >)
    sampler: SamplerCfg = field(default_factory=SamplerCfg)
    n_trials: int = 20
    timeout: Optional[float] = None  # seconds; no new trial starts after it
    workers: Any = 1  # local worker processes, or auto: one per visible GPU (1 without); --workers overrides
    seed: int = 0  # training seed of every proxy run (the same for all trials: a fair comparison)
    proxy: Dict[str, Any] = field(default_factory=dict)  # snapgen.proxy.ProxyConfig fields
    target: TargetCfg = field(default_factory=TargetCfg)
    latency: LatencyCfg = field(default_factory=LatencyCfg)
    early_stopping: EarlyStoppingCfg = field(default_factory=EarlyStoppingCfg)
    reference_point: Dict[str, float] = field(default_factory=dict)  # hypervolume reference per objective
    storage: Optional[str] = None  # Optuna storage URL; default sqlite:///<output_dir>/study.db
    output_dir: Optional[str] = None  # default runs/<name>
    heartbeat: HeartbeatCfg = field(default_factory=HeartbeatCfg)
    synthetic: SyntheticCfg = field(default_factory=SyntheticCfg)


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
    mode: str = "cumulative"  # cumulative: each step builds on the previous; one_at_a_time: each on base
    base: Optional[str] = None  # base preset (one_at_a_time; cumulative starts from the first step)
    steps: List[AblationStepCfg] = MISSING
    seeds: List[int] = field(default_factory=lambda: [0, 1])
    quality: str = "fd-fmnist"  # a quality metric of archsearch.objectives.METRICS
    description: str = ""
    proxy: Dict[str, Any] = field(default_factory=dict)
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
def _allowed(schema) -> list[str]:
    return [f.name for f in dataclasses.fields(schema)]


def _nested_schema(schema, name: str):
    """(dataclass, is_list) of a field holding a structured config, else (None, False)."""
    import typing

    hints = typing.get_type_hints(schema)
    t = hints[name]
    if dataclasses.is_dataclass(t):
        return t, False
    if typing.get_origin(t) in (list, List) and dataclasses.is_dataclass(typing.get_args(t)[0]):
        return typing.get_args(t)[0], True
    return None, False


def check_keys(data: Any, schema, *, file: str, prefix: str = "") -> None:
    """Unknown keys, with their full dotted path and the allowed names (OmegaConf's own message
    names only the last key of a nested path)."""
    if not isinstance(data, dict):
        where = prefix.rstrip(".") or None
        raise UserError(f"must be a mapping with keys {', '.join(_allowed(schema))}", file=file, key=where)
    for k, v in data.items():
        if k not in _allowed(schema):
            raise UserError(f"unknown key {k!r}; allowed: {', '.join(_allowed(schema))}", file=file,
                            key=f"{prefix}{k}")
        sub, is_list = _nested_schema(schema, k)
        if sub is None or v is None:
            continue
        if is_list:
            if not isinstance(v, list):
                raise UserError(f"must be a list of mappings with keys {', '.join(_allowed(sub))}", file=file,
                                key=f"{prefix}{k}")
            for i, item in enumerate(v):
                check_keys(item, sub, file=file, prefix=f"{prefix}{k}[{i}].")
        else:
            check_keys(v, sub, file=file, prefix=f"{prefix}{k}.")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """``key=value`` overrides (dotted paths; values parsed as YAML, as OmegaConf's dotlist does)."""
    cfg = OmegaConf.create(data)
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} must look like key=value (dotted path, e.g. sampler.seed=3)",
                            file=CLI)
        key, value = item.split("=", 1)
        key = key.strip()
        if not key:
            raise UserError(f"override {item!r} has an empty key", file=CLI)
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            parsed = value
        try:
            OmegaConf.update(cfg, key, parsed, merge=False, force_add=True)  # key=VALUE replaces
        except OmegaConfBaseException as e:
            raise UserError(f"cannot apply override: {str(e).splitlines()[0]}", file=CLI, key=key) from None
    return OmegaConf.to_container(cfg, resolve=False)


def to_structured(data: dict, schema, *, file: str):
    """Merge into the structured schema (types checked by OmegaConf), resolve interpolations and
    return a plain object (dataclass instance)."""
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(data))
        OmegaConf.resolve(cfg)
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise UserError("missing required key", file=file, key=missing[0])
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or None
        msg = str(e).splitlines()[0]
        msg = re.sub(r"\s*full_key:.*$", "", msg)
        raise UserError(msg, file=file, key=key) from None


def load_config(path: str | Path, overrides: list[str] | None, schema):
    """YAML file + overrides -> (schema instance, resolved plain dict)."""
    f = str(path)
    data = load_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"a study file must be a mapping with keys {', '.join(_allowed(schema))}", file=f)
    check_keys(data, schema, file=f)
    if overrides:
        data = apply_overrides(data, overrides)
        check_keys(data, schema, file=CLI)
    obj = to_structured(data, schema, file=f)
    return obj


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
    if lat.mode not in LATENCY_MODES:
        raise UserError(f"unknown mode {lat.mode!r}; allowed: {', '.join(LATENCY_MODES)}", file=file,
                        key="latency.mode")
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
    for k in ("latent_size", "context_len", "sampling_steps"):
        if getattr(cfg.target, k) <= 0:
            raise UserError(f"must be a positive integer, got {getattr(cfg.target, k)}", file=file, key=f"target.{k}")
    if lat.mode == "table":
        from archsearch.objectives.latency import check_table

        check_table(lat, cfg.target, space, file=file)
    if space.kind == "decoder":
        from archsearch.objectives.decoder_quality import decoder_proxy_config

        decoder_proxy_config(cfg.proxy, file=file)
    else:
        from archsearch.objectives.quality import validate_proxy_keys

        validate_proxy_keys(cfg.proxy, file=file)
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
        if o.direction not in DIRECTIONS:
            raise UserError(f"unknown direction {o.direction!r}; allowed: {', '.join(DIRECTIONS)}", file=f,
                            key=f"objectives[{i}].direction")
    constraints = [parse_constraint(c, file=f, key=f"constraints[{i}]", metrics=available)
                   for i, c in enumerate(cfg.constraints)]
    s = cfg.sampler
    if s.name not in SAMPLERS:
        raise UserError(f"unknown sampler {s.name!r}; allowed: {', '.join(SAMPLERS)}", file=f, key="sampler.name")
    if cfg.workers != "auto" and (isinstance(cfg.workers, bool) or not isinstance(cfg.workers, int) or cfg.workers < 1):
        raise UserError(f"must be an integer >= 1 or auto, got {cfg.workers!r}", file=f, key="workers")
    if cfg.n_trials < 1:
        raise UserError(f"must be >= 1, got {cfg.n_trials}", file=f, key="n_trials")
    if cfg.timeout is not None and cfg.timeout <= 0:
        raise UserError(f"must be > 0 seconds, got {cfg.timeout}", file=f, key="timeout")
    for k in cfg.reference_point:
        if k not in seen:
            raise UserError(f"{k!r} is not an objective of this study; allowed: {', '.join(seen)}", file=f,
                            key=f"reference_point.{k}")
    es = cfg.early_stopping
    if es.eta <= 1:
        raise UserError(f"must be > 1, got {es.eta}", file=f, key="early_stopping.eta")
    if es.min_trials < 1:
        raise UserError(f"must be >= 1, got {es.min_trials}", file=f, key="early_stopping.min_trials")
    if cfg.heartbeat.interval < 1:
        raise UserError(f"must be >= 1 second, got {cfg.heartbeat.interval}", file=f, key="heartbeat.interval")
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
    return Study(cfg=cfg, file=path, space=space, objectives=list(cfg.objectives), constraints=constraints,
                 overrides=overrides)


def load_ablation(path: str | Path, overrides: list[str] | None = None):
    from archsearch.objectives import METRICS

    path = Path(path)
    f = str(path)
    cfg: AblationCfg = load_config(path, list(overrides or []), AblationCfg)
    space = validate_common(cfg, f, path, METRICS)
    if cfg.mode not in ABLATION_MODES:
        raise UserError(f"unknown mode {cfg.mode!r}; allowed: {', '.join(ABLATION_MODES)}", file=f, key="mode")
    quality = [n for n, m in METRICS.items() if m.kind == "quality"]
    if cfg.quality not in quality:
        raise UserError(f"unknown quality metric {cfg.quality!r}; allowed: {', '.join(quality)}", file=f,
                        key="quality")
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
