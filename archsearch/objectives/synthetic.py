"""``synthetic``: an analytic stand-in for a quality metric (lower is better).

It trains nothing: the value is a deterministic function of the architecture's size plus a
per-(architecture, seed) offset drawn from their hash, and it is "reached" through ``evals``
intermediate evaluations that improve towards it, ``seconds_per_eval`` apart. The offset is the
metric's seed noise, and ``evals`` its budget: uniform around 5 with width 10 at ``NOISE_EVALS``
evaluations, shrinking like 1/sqrt(evals) (more evaluations measure the same value more precisely,
as a longer training would; the draw of one seed is the same at every budget, only smaller).
``archsearch fidelity`` relies on this to test its statistics. It exists so that the study
machinery (early stopping, resumption, workers, dashboards) can be tested and demonstrated in
seconds; no result of it says anything about real architectures.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from typing import Callable

NOISE_EVALS = 4  # the budget at which the seed offset spans [0, 10) (its original form)


@dataclass(frozen=True)
class SyntheticResult:
    metric: str
    value: float
    steps: int
    seconds: float
    evaluations: tuple
    stopped_early: bool

    def to_dict(self) -> dict:
        return {"metric": self.metric, "value": self.value, "steps": self.steps, "seconds": self.seconds,
                "evaluations": [list(e) for e in self.evaluations], "stopped_early": self.stopped_early}


def synthetic_quality(spec, params: float, *, evals: int, seconds_per_eval: float, seed: int,
                      on_eval: Callable[[int, float], bool] | None = None) -> SyntheticResult:
    h = int(hashlib.sha256(f"{spec.key()}|{seed}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    noise = 10.0 * (h - 0.5) * math.sqrt(NOISE_EVALS / evals)
    final = 40.0 / (1.0 + math.log10(max(params, 1.0) / 1e5)) + 5.0 + noise
    t0 = time.perf_counter()
    out, stopped = [], False
    for k in range(1, evals + 1):
        time.sleep(seconds_per_eval)
        value = final * (1.0 + 2.0 * (1.0 - k / evals))
        out.append((k * 100, value))
        if on_eval is not None and on_eval(k * 100, value) and k < evals:
            stopped = True
            break
    return SyntheticResult("synthetic", out[-1][1], out[-1][0], time.perf_counter() - t0, tuple(out), stopped)
