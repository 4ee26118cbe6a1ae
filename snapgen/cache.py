"""Content-addressed artefact cache: where it lives, how keys are hashed, how files are written.

Every cached artefact (proxy autoencoder, encoded latents, metric classifier, text embeddings,
downloaded data) is stored under a key that hashes *everything it was built from* (data file
contents, configs, code version tag), so changing any input yields a new key and the stale entry
is simply never read again.

Writes are atomic (temporary file in the same directory + ``os.replace``), so a run killed mid-write
never leaves a file that a later run trusts. Builds are serialised across processes with an
advisory lock file (``fcntl.flock``), so several study workers starting at once build an artefact
once and the others wait and then read it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

CACHE_ENV = "SNAPGEN_CACHE"
# Bump when the format or the training code of cached artefacts changes incompatibly.
CACHE_VERSION = "1"


def cache_root() -> Path:
    """``$SNAPGEN_CACHE`` if set, else ``~/.cache/snapgen``."""
    env = os.environ.get(CACHE_ENV)
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "snapgen"
    return root


def cache_dir(*parts: str) -> Path:
    p = cache_root().joinpath(*parts)
    p.mkdir(parents=True, exist_ok=True)
    return p


# ---- hashing --------------------------------------------------------------------------------
def hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_file(path: str | Path, algo: str = "sha256", chunk: int = 1 << 20) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_config(obj: Any) -> str:
    """Stable hash of a JSON-able object (dataclasses via ``dataclasses.asdict`` first)."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hash_bytes(text.encode())


def combine(*hashes: str, n: int = 16) -> str:
    """A short key made from several hashes (and the cache format version)."""
    return hash_bytes("|".join((CACHE_VERSION,) + hashes).encode())[:n]


# ---- atomic writes --------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed over ``path``.

    On any exception (or a kill) the temporary file is removed (or left with a ``.tmp`` suffix that
    nothing reads), never renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:  # make the content durable before the rename
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_tensors(path: str | Path) -> Any:
    """Load a cached tensor container saved by :func:`atomic_torch_save` (weights only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


# ---- locking --------------------------------------------------------------------------------
@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Exclusive advisory lock on ``path`` (created if needed); released on exit or process death."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            import fcntl
        except ImportError:  # Windows: no flock; atomic renames still keep entries consistent
            yield
            return
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def get_or_build(marker: str | Path, build: Callable[[], None], lock: str | Path | None = None) -> bool:
    """Run ``build()`` unless ``marker`` exists; serialised by a lock next to the marker.

    ``build`` must write its outputs atomically and write ``marker`` last. Returns True if this call
    built the entry, False if it was already there (cache hit)."""
    marker = Path(marker)
    if marker.exists():
        return False
    with file_lock(lock or marker.with_name(marker.name + ".lock")):
        if marker.exists():  # another worker built it while we waited
            return False
        build()
        if not marker.exists():
            raise RuntimeError(f"cache build did not write its marker {marker}")
        return True
