"""End-to-end latency of one architecture on one backend, with a per-stage breakdown."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from archsearch.latency.backends import Backend, get_backend, machine_info
from archsearch.latency.models import (StageTimer, build_module, example_inputs, spec_kind, stage_groups,
                                       stage_order)
from archsearch.latency.timing import Timing, TimingPolicy, time_callable, torch_threads
from snapgen.errors import UserError


@dataclass
class LatencyResult:
    """One measurement. ``median_ms`` is None when the backend cannot time here (Core ML on Linux)."""

    name: str
    kind: str  # unet | decoder
    backend: str
    device: str
    mode: str
    threads: int
    dtype: str
    clock: str
    latent_size: int
    batch: int
    timed: bool
    median_ms: float | None
    p10_ms: float | None = None
    p90_ms: float | None = None
    iqr_ms: float | None = None
    repeats: int = 0
    stable: bool = False
    note: str = ""
    per_stage_ms: dict[str, float] = field(default_factory=dict)  # hook timings, separate pass
    machine: dict[str, Any] = field(default_factory=dict)
    times_ms: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_latent(latent_size: int, spec) -> None:
    if latent_size <= 0:
        raise UserError(f"must be a positive integer, got {latent_size}", key="--latent-size")
    if spec_kind(spec) == "unet":
        f = 2 ** (spec.num_stages - 1)
        if latent_size % f:
            raise UserError(f"must be divisible by {f} ({spec.num_stages} stages), got {latent_size}",
                            key="--latent-size")


def measure_latency(spec, backend: str | Backend = "torch", device: str | None = None, latent_size: int = 128, *,
                    context_len: int = 77, threads: int | None = None, mode: str = "eager", dtype: str = "float32",
                    policy: TimingPolicy | None = None, breakdown: bool = True, breakdown_runs: int | None = None,
                    model=None, clock: str = "wall") -> LatencyResult:
    """Measure one forward pass (batch 1) of the UNet or decoder described by ``spec``.

    The end-to-end number comes from plain runs (no hooks); the per-stage breakdown from a
    separate pass with forward hooks (``breakdown_runs`` runs, default 3 or 1 when a run takes
    more than 2 s), reported as medians per stage and normalised to nothing: its sum can differ
    from ``median_ms`` by the glue between blocks (skip concatenations) and hook overhead.
    """
    be = backend if isinstance(backend, Backend) else get_backend(backend, device, threads=threads, mode=mode,
                                                                    dtype=dtype, clock=clock)
    _check_latent(latent_size, spec)
    inputs, names = example_inputs(spec, latent_size, context_len)
    with torch_threads(be.threads):
        module = model if model is not None else build_module(spec)
        prep = be.prepare(module, inputs, names)
    info = machine_info()
    common = dict(name=getattr(spec, "name", "custom"), kind=spec_kind(spec), backend=be.name, device=be.device,
                  mode=be.mode, threads=be.threads, dtype=be.dtype, clock=be.clock, latent_size=latent_size, batch=1)
    if prep.fn is None:
        return LatencyResult(**common, timed=False, median_ms=None, note=prep.note, machine=info)
    t: Timing = time_callable(prep.fn, policy, threads=be.threads, sync=prep.sync, clock=be.clock)
    per_stage: dict[str, float] = {}
    if breakdown and prep.module is not None:
        runs = breakdown_runs or (1 if t.median_ms > 2000 else 3)
        timer = StageTimer(stage_groups(prep.module), sync=prep.sync, clock=be.clock)
        samples: dict[str, list[float]] = {k: [] for k in timer.totals}
        try:
            with torch_threads(be.threads):
                for _ in range(runs):
                    timer.reset()
                    prep.fn()
                    prep.sync()
                    for k, v in timer.totals.items():
                        samples[k].append(v * 1e3)
        finally:
            timer.remove()
        per_stage = {k: float(np.median(v)) for k, v in sorted(samples.items(), key=lambda kv: stage_order(kv[0]))}
    try:
        info["loadavg_1m_end"] = round(__import__("os").getloadavg()[0], 2)
    except OSError:
        pass
    return LatencyResult(**common, timed=True, median_ms=t.median_ms, p10_ms=t.p10_ms, p90_ms=t.p90_ms,
                         iqr_ms=t.iqr_ms, repeats=t.repeats, stable=t.stable, note=prep.note,
                         per_stage_ms=per_stage, machine=info, times_ms=t.times_ms)
