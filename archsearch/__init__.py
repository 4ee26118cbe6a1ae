"""archsearch: declarative architecture search over SnapGen models (spaces, cost, latency, studies,
Pareto fronts, dashboards, ablations, promotion)."""
from snapgen import __version__  # one distribution, one version: the package metadata's

__all__ = ["__version__"]
