"""The objective registry: every metric a study can optimise or constrain, and how it is computed.

A metric is a name, a natural direction and a kind; its value comes from one of four small
modules, one job each:

* :mod:`.cost`             ``params``, ``gflops`` — the FULL-size architecture at the target resolution
                           (fvcore via :func:`archsearch.cost.cost_of`, cached on disk per spec hash);
* :mod:`.latency`          ``latency_ms``, ``e2e_latency_ms`` (= sampling steps x UNet + decoder), from
                           :mod:`archsearch.latency` (a calibrated table or a measurement);
* :mod:`.quality`          ``fid`` — the proxy quality of the proxy-scaled model (:func:`snapgen.proxy.run_proxy`);
* :mod:`.decoder_quality`  ``psnr`` — a decoder candidate trained briefly against the frozen proxy encoder;
* :mod:`.synthetic`        ``synthetic`` — an analytic stand-in for a quality metric, with simulated
                           intermediate evaluations (tests, demos of the machinery; it trains nothing).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    direction: str  # the natural direction (an objective may override it)
    kind: str  # cost | latency | quality
    unit: str
    spaces: tuple[str, ...]  # space kinds it applies to
    help: str


METRICS: dict[str, Metric] = {m.name: m for m in [
    Metric("fid", "minimize", "quality", "", ("unet",),
           "proxy quality: Fréchet distance of the proxy-scaled model's samples (fd-fmnist on the embedded default)"),
    Metric("psnr", "maximize", "quality", "dB", ("decoder",),
           "reconstruction PSNR of the proxy-scaled decoder trained briefly against the frozen proxy encoder"),
    Metric("synthetic", "minimize", "quality", "", ("unet", "decoder"),
           "analytic stand-in for a quality metric (no training; for tests and demos)"),
    Metric("params", "minimize", "cost", "", ("unet", "decoder"), "parameters of the full-size architecture"),
    Metric("gflops", "minimize", "cost", "GFLOPs", ("unet", "decoder"),
           "GFLOPs (1 multiply-add = 1 FLOP, attention included) of one forward at the target latent size"),
    Metric("latency_ms", "minimize", "latency", "ms", ("unet", "decoder"),
           "latency of one forward of the full-size architecture on the target backend/device"),
    Metric("e2e_latency_ms", "minimize", "latency", "ms", ("unet", "decoder"),
           "end-to-end: sampling_steps x UNet latency + decoder latency"),
]}

QUALITY = tuple(n for n, m in METRICS.items() if m.kind == "quality")


def metrics_for(kind: str) -> list[str]:
    return [n for n, m in METRICS.items() if kind in m.spaces]
