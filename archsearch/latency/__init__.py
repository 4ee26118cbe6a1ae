"""Device latency: measurement backends, calibrated per-block lookup tables, validation.

Study-layer API::

    from archsearch.latency import LatencyModel, measure_latency

    lm = LatencyModel.from_table("tables/unet-torch-cpu.jsonl", space)   # {mode: table, path: ...}
    ms = lm.predict(spec, latent_size=128)                                 # < 1 ms per trial
    lm = LatencyModel.measuring(backend="torch", device="cpu")             # {mode: measure}
    ms = lm.predict(spec, latent_size=128)                                 # one real measurement
    res = measure_latency(spec, "torch", "cpu", 128)                       # LatencyResult
"""
from archsearch.latency.backends import BACKENDS, Backend, get_backend
from archsearch.latency.measure import LatencyResult, measure_latency
from archsearch.latency.timing import Timing, TimingPolicy, time_callable

__all__ = ["BACKENDS", "Backend", "get_backend", "LatencyResult", "measure_latency", "Timing", "TimingPolicy",
           "time_callable", "LatencyModel", "LatencyTable"]


def __getattr__(name):  # the table layer imports the search space (optuna); load it on first use
    if name in ("LatencyModel", "LatencyTable"):
        from archsearch.latency import table

        return getattr(table, name)
    raise AttributeError(name)
