"""The quality of one architecture at one seed and one fidelity, through the study's own code.

:func:`quality_value` is the single place where ``archsearch fidelity`` touches the quality metric:
it builds the study's :class:`~archsearch.study.runner.TrialRunner` with the seed and the quality
settings replaced and calls its ``run_quality``, the dispatch every trial of ``archsearch run`` goes
through (``fid`` -> the proxy, ``psnr`` -> the decoder proxy, ``synthetic`` -> the analytic stand-in).
When the metric registry replaces that dispatch, this function is what to re-point.

A *side* is one set of quality settings: the proxy's (the study's own ``proxy:`` or ``synthetic:``
section, untouched) and the reference's (x M steps — x M ``evals`` for ``synthetic`` — no
intermediate evaluations, an optional resolution, then the user's ``key=value`` overrides).
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from snapgen.cache import hash_config
from snapgen.errors import UserError

CLI = "<command line>"
RUNTIME_KEYS = ("progress",)  # settings that do not change a value: left out of the settings hash


def _metric(name: str):
    from archsearch.objectives import METRICS

    return METRICS[name]


def _unet_proxy(metric: str) -> bool:
    """A quality metric trained through the UNet proxy (fd-fmnist, fid: the registry's UNet-only ones)."""
    from archsearch.objectives import METRICS

    return METRICS[metric].kind == "quality" and METRICS[metric].spaces == ("unet",)


def quality_metric(study) -> str:
    """The study's quality metric (``fid``, ``psnr`` or ``synthetic``), an objective or a constraint."""
    from archsearch.objectives import METRICS

    q = next((m for m in study.needed_metrics() if METRICS[m].kind == "quality"), None)
    if q is None:
        raise UserError("this study has no quality metric (objective or constraint); there is nothing whose "
                        "fidelity could be measured", file=str(study.file), key="objectives")
    return q


def section_of(metric: str) -> str:
    """The study section holding the metric's settings: ``proxy:`` for a metric the registry can
    configure from it, the synthetic stand-in's own ``synthetic:`` otherwise."""
    from archsearch.objectives import METRICS

    return "proxy" if METRICS[metric].config is not None else "synthetic"


def _runner(study, seed: int, quality: Mapping[str, Any], workers: int = 1):
    from archsearch.study.runner import TrialRunner

    cfg = copy.deepcopy(study.cfg)
    cfg.seed = int(seed)
    cfg.early_stopping.enabled = False  # a fidelity evaluation always runs its whole budget
    if section_of(quality_metric(study)) == "synthetic":
        cfg.synthetic = _synthetic_cfg(quality, file=str(study.file))
    else:
        cfg.proxy = copy.deepcopy(dict(quality))
    return TrialRunner(dataclasses.replace(study, cfg=cfg), None, workers=workers, log=lambda s: None)


def quality_value(study, spec, seed: int, quality: Mapping[str, Any], *, workers: int = 1):
    """Train/score ``spec`` with ``seed`` under the quality settings ``quality`` (the mapping that
    replaces the study's ``proxy:`` section, or ``synthetic:`` for the synthetic metric) through the
    study's dispatch. Returns the metric's result object (``.value``, ``.metric``, ``.steps``)."""
    runner = _runner(study, seed, quality, workers)
    metrics = runner.cost(spec) if runner.quality == "synthetic" else {}  # synthetic scores the full-size params
    return runner.run_quality(spec, metrics, None)


def resolved_quality(study, quality: Mapping[str, Any], *, file: str = CLI):
    """The validated config object of a side: ProxyConfig, DecoderProxyConfig or SyntheticCfg."""
    from types import SimpleNamespace

    from archsearch.objectives import METRICS

    metric = quality_metric(study)
    if section_of(metric) == "synthetic":
        return _synthetic_cfg(quality, file=file)
    return METRICS[metric].config(SimpleNamespace(proxy=dict(quality)), file, False)


def _synthetic_cfg(quality: Mapping[str, Any], *, file: str):
    from snapgen.config import structured

    from archsearch.study.schema import SyntheticCfg

    cfg = structured(SyntheticCfg, dict(quality), file=file, prefix="synthetic.")
    if cfg.evals < 1:
        raise UserError(f"must be >= 1, got {cfg.evals}", file=file, key="synthetic.evals")
    return cfg


@dataclass(frozen=True)
class Side:
    """One set of quality settings and the seeds it is evaluated with."""

    name: str  # proxy | reference
    metric: str
    quality: dict  # the mapping handed to quality_value
    resolved: dict  # the validated config, as a dict (what the key hashes, runtime keys left out)
    seeds: tuple[int, ...]

    @property
    def key(self) -> str:
        return hash_config({"metric": self.metric, "settings": self.resolved})[:12]

    def describe(self) -> str:
        r = self.resolved
        budget = f"{r['evals']} evals" if self.metric == "synthetic" else f"{r['steps']} steps"
        extra = ""
        if _unet_proxy(self.metric):
            extra = f", {r['num_samples']} samples, {r['resolution']} px"
        return f"{budget}{extra}, seeds {list(self.seeds)}"


def _side(name, study, quality: dict, seeds: Sequence[int], file: str) -> Side:
    cfg = resolved_quality(study, quality, file=file)
    resolved = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUNTIME_KEYS}
    return Side(name=name, metric=quality_metric(study), quality=quality, resolved=resolved, seeds=tuple(seeds))


def proxy_side(study, seeds: Sequence[int]) -> Side:
    """The study's own quality settings, untouched."""
    metric = quality_metric(study)
    base = (dataclasses.asdict(study.cfg.synthetic) if metric == "synthetic" else copy.deepcopy(dict(study.cfg.proxy)))
    return _side("proxy", study, base, seeds, file=str(study.file))


def reference_side(study, seeds: Sequence[int], *, budget_mult: float, resolution: int | None = None,
                   overrides: Sequence[str] = (), specs: Sequence = ()) -> Side:
    """The higher fidelity: x ``budget_mult`` steps (``evals`` for synthetic), no intermediate
    evaluations, ``resolution`` (proxy and embedded autoencoder together), then ``overrides`` (keys of
    the study's quality section, dotted for nested ones: ``num_samples=1000``, ``classifier.steps=300``).
    Every value is checked here, against ``specs`` too (the resolution must suit their stages)."""
    from archsearch.study.schema import apply_overrides

    metric = quality_metric(study)
    base = proxy_side(study, seeds)
    items: list[str] = []
    if metric == "synthetic":
        items.append(f"evals={max(1, int(math.floor(base.resolved['evals'] * budget_mult + 0.5)))}")
        if resolution is not None:
            raise UserError("the synthetic metric has no resolution", file=CLI, key="--resolution")
    else:
        items += [f"steps={max(1, int(math.floor(base.resolved['steps'] * budget_mult + 0.5)))}", "eval_every=0"]
        if _unet_proxy(metric):
            items.append("eval_at=[]")
        if resolution is not None:
            if _unet_proxy(metric):
                items.append(f"resolution={resolution}")
                if not base.resolved.get("autoencoder"):
                    items.append(f"ae.resolution={resolution}")
            else:
                items.append(f"ae.resolution={resolution}")
    for o in overrides:
        if "=" not in o:
            raise UserError(f"override {o!r} must look like key=value (keys of the study's {section_of(metric)}: "
                            "section, e.g. num_samples=1000)", file=CLI)
    quality = apply_overrides(copy.deepcopy(base.quality), items + list(overrides))
    side = _side("reference", study, quality, seeds, file=CLI)
    _check_resolution(side, specs, given=resolution is not None)
    return side


def _check_resolution(side: Side, specs: Sequence, *, given: bool) -> None:
    """The reference resolution must be what the autoencoder and every architecture can take."""
    r = side.resolved
    key = "--resolution" if given else "resolution"
    if _unet_proxy(side.metric):
        res = int(r["resolution"])
        if r.get("dataset") == "latents" or r.get("autoencoder"):
            return  # an external autoencoder's factor is checked by the proxy when it loads it
        ae = r["ae"]
        if int(ae["resolution"]) != res:
            raise UserError(f"resolution {res} differs from ae.resolution {ae['resolution']}; --resolution sets both",
                            file=CLI, key=key)
        f = 2 ** (len(ae["block_out_channels"]) - 1)
        if res <= 0 or res % f:
            raise UserError(f"{res} px is not a multiple of {f}, the embedded autoencoder's downsampling factor",
                            file=CLI, key=key)
        for spec in specs:
            n = 2 ** (len(spec.stages) - 1)
            if (res // f) % n:
                raise UserError(f"{res} px gives {res // f}x{res // f} latents, which {spec.name}'s "
                                f"{len(spec.stages)} stages cannot halve {len(spec.stages) - 1} times; use a multiple "
                                f"of {f * n} px", file=CLI, key=key)
    elif _metric(side.metric).kind == "quality" and _metric(side.metric).spaces == ("decoder",):
        ae = r["ae"]
        f = 2 ** (len(ae["block_out_channels"]) - 1)
        res = int(ae["resolution"])
        if res <= 0 or res % f:
            raise UserError(f"{res} px is not a multiple of {f}, the proxy autoencoder's downsampling factor",
                            file=CLI, key=key)
