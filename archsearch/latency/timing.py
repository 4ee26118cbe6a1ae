"""The timing method shared by every backend: warm-up, repeats until the median is stable
(with a cap), median and spread.

Hand-written on purpose: ``torch.utils.benchmark.Timer.timeit`` warms up twice on every call and
``adaptive_autorange`` has no minimum repeat count, so for a multi-second forward pass (a full
UNet at 128x128 on a CPU) neither gives "at least 3 samples, at most N seconds". The loop below is
``timeit``'s idea with those two knobs; statistics come from numpy.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch


@dataclass
class Timing:
    """Per-call wall-clock times (ms) of one measured callable and their summary."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    iqr_ms: float
    repeats: int  # measured samples (warm-up excluded)
    number: int  # calls per sample (> 1 only for sub-millisecond callables)
    stable: bool  # the median settled before the cap was hit
    times_ms: list[float] = field(default_factory=list)

    @classmethod
    def from_times(cls, times_ms: list[float], number: int = 1, stable: bool = True) -> "Timing":
        a = np.asarray(times_ms, dtype=float)
        q10, q25, q50, q75, q90 = np.percentile(a, [10, 25, 50, 75, 90])
        return cls(median_ms=float(q50), p10_ms=float(q10), p90_ms=float(q90), iqr_ms=float(q75 - q25),
                   repeats=len(a), number=number, stable=stable, times_ms=[float(x) for x in a])

    def to_dict(self, with_times: bool = False) -> dict:
        d = asdict(self)
        if not with_times:
            d.pop("times_ms")
        return d


@contextmanager
def torch_threads(n: int | None):
    """Fix torch's intra-op thread count for the block (restored afterwards)."""
    if not n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


@dataclass(frozen=True)
class TimingPolicy:
    """How long to measure.

    ``warmup`` calls are discarded. Then samples are taken until (a) at least ``min_repeats``
    samples and ``min_time_s`` seconds, and (b) the median is stable: adding the last sample moved
    it by less than ``rel_tol`` *and* the interquartile range is below ``rel_iqr`` of the median,
    or (from 5 samples on) it moved by less than ``rel_tol / 2``; stop anyway at ``max_repeats``
    samples, or at ``max_time_s`` seconds once ``min_repeats`` samples are in. Samples shorter than ``min_sample_s`` batch
    several calls (``number``) so the clock's resolution does not matter.
    """

    warmup: int = 1
    min_repeats: int = 3
    max_repeats: int = 30
    min_time_s: float = 0.2
    max_time_s: float = 30.0
    rel_tol: float = 0.01
    rel_iqr: float = 0.05
    min_sample_s: float = 0.005

    @classmethod
    def quick(cls) -> "TimingPolicy":
        """Few repeats, for tests and smoke runs."""
        return cls(warmup=1, min_repeats=2, max_repeats=3, min_time_s=0.0, max_time_s=2.0)


CLOCKS = ("wall", "cpu")


def time_callable(fn: Callable[[], object], policy: TimingPolicy | None = None, *, threads: int | None = None,
                  sync: Callable[[], None] | None = None, clock: str = "wall") -> Timing:
    """Time ``fn()`` (which must do all the work, synchronously once ``sync()`` returns).

    ``clock="wall"`` (default) is latency as a user sees it. ``clock="cpu"`` counts the process's
    CPU time instead: on a shared machine whose other jobs take the cores away, wall time measures
    the scheduler, CPU time still measures the work; with one thread on an otherwise idle core the
    two agree. Only meaningful for work done on the CPU by this process.
    """
    policy = policy or TimingPolicy()
    sync = sync or (lambda: None)
    now = time.process_time if clock == "cpu" else time.perf_counter

    def once(number: int) -> float:
        t0 = now()
        for _ in range(number):
            fn()
        sync()
        return (now() - t0) / number

    with torch_threads(threads):
        first = None
        for _ in range(max(policy.warmup, 1)):  # at least one call: it also sizes the sample
            first = once(1)
        number = 1
        if first < policy.min_sample_s:
            number = max(1, int(policy.min_sample_s / max(first, 1e-7)))
        times: list[float] = []
        total = 0.0
        stable = False
        while True:
            dt = once(number)
            times.append(dt * 1e3)
            total += dt * number
            n = len(times)
            if n >= max(policy.min_repeats, 2) and total >= policy.min_time_s:
                med = float(np.median(times))
                prev = float(np.median(times[:-1]))
                q25, q75 = np.percentile(times, [25, 75])
                moved = abs(med - prev) / med
                if moved < policy.rel_tol and (q75 - q25) / med < policy.rel_iqr:
                    stable = True
                    break
                if n >= 5 and moved < policy.rel_tol / 2:  # noisy machine: the median itself has settled
                    stable = True
                    break
            if n >= policy.max_repeats or (total >= policy.max_time_s and n >= policy.min_repeats):
                break
    return Timing.from_times(times, number=number, stable=stable)
