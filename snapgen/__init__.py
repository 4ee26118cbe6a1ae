"""SnapGen: the model library and trainer (blocks, ArchSpec, UNet, decoders, flow matching, training,
sampling, export). ``archsearch`` builds on it; it never imports ``archsearch``."""
from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "snapgen-archsearch"  # one distribution ships both packages: one version

try:
    __version__ = version(DISTRIBUTION)
except PackageNotFoundError:  # a source tree that was never installed (pip install -e . gives metadata)
    __version__ = "0+unknown"
