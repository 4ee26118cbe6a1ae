"""archsearch: declarative architecture search over SnapGen models (spaces, cost, latency, studies,
Pareto fronts, dashboards, ablations, promotion)."""
from snapgen import __version__  # noqa: F401  (one distribution, one version: the package metadata's)
