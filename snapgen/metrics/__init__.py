"""Quality metrics: Inception FID and the offline ``fd-fmnist`` proxy metric, via torch-fidelity."""
from snapgen.metrics.classifier import ClassifierConfig, metric_classifier
from snapgen.metrics.fidelity import FD_FMNIST, FID, frechet_distance

__all__ = ["ClassifierConfig", "metric_classifier", "frechet_distance", "FD_FMNIST", "FID"]
