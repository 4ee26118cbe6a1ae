"""The metric registry: every metric a study or an ablation can optimise or constrain, with how it
is computed. The runner and the ablation dispatch through it; nothing else branches on a name.

* :mod:`.cost`             ``params``, ``gflops`` — the FULL-size architecture at the target resolution
                           (fvcore via :func:`archsearch.cost.cost_of`, cached on disk per spec key);
* :mod:`.latency`          ``latency_ms``, ``e2e_latency_ms`` (= sampling steps x UNet + decoder), from
                           :mod:`archsearch.latency` (a calibrated table or a measurement);
* :mod:`.quality`          ``fd-fmnist`` / ``fid`` — the proxy quality of the proxy-scaled model
                           (:func:`snapgen.proxy.run_proxy`), named by the metric it computes: the
                           embedded Fashion-MNIST feature distance, or Inception FID (``proxy.metric: fid``);
* :mod:`.decoder_quality`  ``psnr`` — a decoder candidate trained briefly against the frozen proxy encoder;
* :mod:`.synthetic`        ``synthetic`` — an analytic stand-in for a quality metric, with simulated
                           intermediate evaluations (tests, demos of the machinery; it trains nothing).

A quality metric carries its callables: ``config(cfg, file, progress)`` (its settings from a study's or
ablation's config), ``run(spec, qcfg, cfg, seed=, params=, on_eval=)`` (a result with ``value``,
``metric``, ``steps``) and ``proxy(qcfg)`` (full spec -> the spec it trains: the space samples none
whose proxy cannot be built).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from snapgen.errors import UserError


@dataclass(frozen=True)
class Metric:
    name: str
    direction: str  # the natural direction (an objective may override it)
    kind: str  # cost | latency | quality
    unit: str
    spaces: tuple[str, ...]  # space kinds it applies to
    help: str
    config: Callable[..., Any] | None = None
    run: Callable[..., Any] | None = None
    proxy: Callable[[Any], Callable] | None = None


def _unet_config(name: str):
    def config(cfg, file: str, progress: bool):
        from archsearch.objectives.quality import proxy_config

        qcfg = proxy_config(cfg.proxy, file=file, progress=progress, metric=name)
        if qcfg.metric != name:
            raise UserError(f"the {name} objective computes proxy.metric {name}, not {qcfg.metric}: name the objective "
                            f"{qcfg.metric} (or drop proxy.metric)", file=file, key="proxy.metric")
        return qcfg

    return config


def _unet_run(spec, qcfg, cfg, *, seed: int, params: float, on_eval=None):
    from snapgen.proxy import run_proxy

    return run_proxy(spec, qcfg, seed=seed, on_eval=on_eval)


def _unet_proxy(qcfg) -> Callable:
    from snapgen.proxy import PROXY_CONTEXT_DIM, proxy_spec

    return lambda spec: proxy_spec(spec, qcfg, latent_channels=qcfg.ae.latent_channels, context_dim=PROXY_CONTEXT_DIM)


def _decoder_config(cfg, file: str, progress: bool):
    from archsearch.objectives.decoder_quality import decoder_proxy_config

    return decoder_proxy_config(cfg.proxy, file=file, progress=progress)


def _decoder_run(spec, qcfg, cfg, *, seed: int, params: float, on_eval=None):
    from archsearch.objectives.decoder_quality import decoder_quality

    return decoder_quality(spec, qcfg, seed=seed, on_eval=on_eval)


def _decoder_proxy(qcfg) -> Callable:
    from archsearch.objectives.decoder_quality import proxy_decoder_spec

    return lambda spec: proxy_decoder_spec(spec, qcfg, qcfg.ae.latent_channels, spec.out_channels)


def _synthetic_run(spec, qcfg, cfg, *, seed: int, params: float, on_eval=None):
    from archsearch.objectives.synthetic import synthetic_quality

    sy = cfg.synthetic
    return synthetic_quality(spec, params, evals=sy.evals, seconds_per_eval=sy.seconds_per_eval, seed=seed,
                             on_eval=on_eval)


_FD = "proxy quality: Fréchet distance of the proxy-scaled model's samples"
METRICS: dict[str, Metric] = {m.name: m for m in [
    Metric("fd-fmnist", "minimize", "quality", "", ("unet",),
           f"{_FD} in the embedded Fashion-MNIST classifier's features (not Inception FID)",
           _unet_config("fd-fmnist"), _unet_run, _unet_proxy),
    Metric("fid", "minimize", "quality", "", ("unet",), f"{_FD}: Inception FID (proxy.metric: fid, real data)",
           _unet_config("fid"), _unet_run, _unet_proxy),
    Metric("psnr", "maximize", "quality", "dB", ("decoder",),
           "reconstruction PSNR of the proxy-scaled decoder trained briefly against the frozen proxy encoder",
           _decoder_config, _decoder_run, _decoder_proxy),
    Metric("synthetic", "minimize", "quality", "", ("unet", "decoder"),
           "analytic stand-in for a quality metric (no training; for tests and demos)", None, _synthetic_run),
    Metric("params", "minimize", "cost", "", ("unet", "decoder"), "parameters of the full-size architecture"),
    Metric("gflops", "minimize", "cost", "GFLOPs", ("unet", "decoder"),
           "GFLOPs (1 multiply-add = 1 FLOP, attention included) of one forward at the target latent size"),
    Metric("latency_ms", "minimize", "latency", "ms", ("unet", "decoder"),
           "latency of one forward of the full-size architecture on the target backend/device"),
    Metric("e2e_latency_ms", "minimize", "latency", "ms", ("unet", "decoder"),
           "end-to-end: sampling_steps x UNet latency + decoder latency"),
]}


def metrics_for(kind: str, metric_kind: str | None = None) -> list[str]:
    return [n for n, m in METRICS.items() if kind in m.spaces and metric_kind in (None, m.kind)]
