"""Fashion-MNIST, the embedded default proxy data set (10 classes, 28x28 grey).

The standard IDX files are looked up in this order, and the first place that has all four wins:

1. an explicit directory (``path=``; if given it must hold the files — no fallback),
2. the user cache (``$SNAPGEN_CACHE/datasets/fashion-mnist``, default ``~/.cache/snapgen/...``),
3. Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``),
4. a download from the canonical mirror into the user cache, verified by checksum.

Files may be gzip-compressed (``*.gz``) or plain.
"""
from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

import torch

from snapgen.cache import atomic_write_bytes, cache_dir, file_lock, hash_bytes
from snapgen.data.base import LabelledImages
from snapgen.data.idx import parse_idx, read_bytes
from snapgen.errors import DataError

CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")
# Names used in prompts ("a photo of a {name}"), lower-case and readable.
PROMPT_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                "ankle boot")

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
MIRROR_ENV = "SNAPGEN_FASHION_MNIST_URL"

FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
# Checksums. ``md5`` is the upstream checksum of the published .gz file (as listed by the
# Fashion-MNIST README and torchvision); ``sha256`` is of the decompressed IDX content (identical
# whatever the gzip wrapper, e.g. Debian's recompressed copy). A download must match one of them.
CHECKSUMS = {
    "train-images-idx3-ubyte": {"md5": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                                "sha256": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"},
    "train-labels-idx1-ubyte": {"md5": "25c81989df183df01b3e8a0aad5dffbe",
                                "sha256": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"},
    "t10k-images-idx3-ubyte": {"md5": "bef4ecab320f06d8554ea6380940ec79",
                               "sha256": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"},
    "t10k-labels-idx1-ubyte": {"md5": "bb300cfdad3c16e7a12a480ee83cd310",
                               "sha256": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"},
}


class _DownloadFailed(Exception):
    """The mirror could not be reached (offline): turned into one line saying where we looked."""


def user_cache_dir() -> Path:
    return cache_dir("datasets", "fashion-mnist")


def _find_in(directory: Path) -> dict[str, Path] | None:
    """Map base name -> existing file (plain or .gz) if all four files are in ``directory``."""
    found = {}
    for base in FILES.values():
        for cand in (directory / base, directory / f"{base}.gz"):
            if cand.is_file():
                found[base] = cand
                break
        else:
            return None
    return found


def _download(base: str, dest_dir: Path, mirror: str, checksums: dict[str, dict[str, str]]) -> Path:
    url = mirror.rstrip("/") + f"/{base}.gz"
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            data = r.read()
    except (urllib.error.URLError, OSError) as e:
        raise _DownloadFailed(f"{url}: {getattr(e, 'reason', e)}") from None
    want = checksums[base]
    ok = hashlib.md5(data).hexdigest() == want["md5"]
    if not ok:  # recompressed copies keep the decompressed content: compare that
        try:
            import gzip

            ok = hashlib.sha256(gzip.decompress(data)).hexdigest() == want["sha256"]
        except (OSError, EOFError, ValueError):
            ok = False
    if not ok:
        raise DataError(f"checksum mismatch (expected md5 {want['md5']} or content sha256 {want['sha256'][:16]}...)",
                        file=url)
    dest = dest_dir / f"{base}.gz"
    atomic_write_bytes(dest, data)  # verified before it is written, written atomically
    return dest


def locate(path: str | Path | None = None, *, download: bool = True, mirror: str | None = None,
           checksums: dict[str, dict[str, str]] | None = None) -> dict[str, Path]:
    """Return the four IDX files (base name -> path), following the lookup order above."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_dir():
            raise DataError("Fashion-MNIST directory not found", file=str(p))
        found = _find_in(p)
        if found is None:
            missing = [b for b in FILES.values() if not (p / b).is_file() and not (p / f"{b}.gz").is_file()]
            raise DataError(f"missing Fashion-MNIST file {missing[0]}(.gz)", file=str(p))
        return found
    cache = user_cache_dir()
    for d in (cache, DEBIAN_DIR):
        found = _find_in(d)
        if found is not None:
            return found
    if not download:
        raise DataError(f"Fashion-MNIST not found in {cache} or {DEBIAN_DIR} and download is disabled")
    mirror = mirror or os.environ.get(MIRROR_ENV) or MIRROR
    checksums = checksums or CHECKSUMS
    with file_lock(cache / ".download.lock"):
        found = _find_in(cache)
        if found is not None:
            return found
        try:
            for base in FILES.values():
                if not (cache / f"{base}.gz").is_file():
                    _download(base, cache, mirror, checksums)
        except _DownloadFailed as e:
            raise DataError(f"Fashion-MNIST not found: looked in {cache} and {DEBIAN_DIR}, and the download failed "
                            f"({e}); fix: `apt-get install dataset-fashion-mnist` (Debian/Ubuntu; `bash "
                            f"scripts/setup.sh` does it), or put the four IDX files ({', '.join(FILES.values())}, "
                            f".gz or plain) in {cache}, or give their directory as proxy.data_path") from None
    return _find_in(cache)


def load(split: str = "train", path: str | Path | None = None, *, download: bool = True,
         mirror: str | None = None) -> LabelledImages:
    """Load a split (``train``: 60k, ``test``: 10k) as uint8 (N, 1, 28, 28) images and labels."""
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}; allowed: train, test")
    files = locate(path, download=download, mirror=mirror)
    img_path = files[FILES[(split, "images")]]
    lab_path = files[FILES[(split, "labels")]]
    img_raw, lab_raw = read_bytes(img_path), read_bytes(lab_path)
    images = parse_idx(img_raw, file=str(img_path), expect_ndim=3)
    labels = parse_idx(lab_raw, file=str(lab_path), expect_ndim=1)
    if len(images) != len(labels):
        raise DataError(f"{len(images)} images but {len(labels)} labels", file=str(lab_path))
    if labels.size and int(labels.max()) >= len(CLASS_NAMES):
        raise DataError(f"label {int(labels.max())} out of range for {len(CLASS_NAMES)} classes", file=str(lab_path))
    return LabelledImages(
        images=torch.from_numpy(images.copy()).unsqueeze(1),
        labels=torch.from_numpy(labels.astype("int64")),
        class_names=PROMPT_NAMES,
        content_hash=hash_bytes(hash_bytes(img_raw).encode() + hash_bytes(lab_raw).encode()),
        source=str(img_path.parent),
    )
