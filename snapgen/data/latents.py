"""Pre-encoded latent shards, for runs where encoding images on the fly would dominate (ImageNet).

A shard directory holds ``*.safetensors`` (preferred) or ``*.pt`` files, each with a ``latents``
tensor (N, C, h, w) of *unscaled* autoencoder latents and a ``labels`` tensor (N,), plus a
``meta.json`` with ``class_names`` and the autoencoder's ``scaling_factor`` / ``shift_factor``
(:class:`LatentShardWriter` also records ``count``, checked on load, and provenance such as the
autoencoder and the resolution). ``meta.json`` is written last: a directory without it is an
unfinished (killed) write and does not load. ``.pt`` shards are loaded with ``weights_only=True``.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from snapgen.cache import atomic_path, atomic_write_json
from snapgen.errors import DataError, UserError


@dataclass(frozen=True, eq=False)
class LatentSet:
    latents: torch.Tensor  # (N, C, h, w), unscaled
    labels: torch.Tensor  # (N,) int64
    class_names: tuple[str, ...]
    scaling_factor: float = 1.0
    shift_factor: float = 0.0
    content_hash: str = ""

    def __len__(self) -> int:
        return len(self.latents)

    def normalized(self) -> torch.Tensor:
        """Latents in the diffusion model's space: (z - shift) * scale (SD3 convention)."""
        return (self.latents - self.shift_factor) * self.scaling_factor


def _load_shard(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file: any loader error is a data error here
        raise DataError(f"cannot read latent shard: {type(e).__name__}: {str(e).splitlines()[0][:200]}",
                        file=str(path)) from None
    if not isinstance(obj, dict):
        raise DataError("latent shard must hold a dict with 'latents' and 'labels'", file=str(path))
    return obj


def _shard_files(d: Path) -> list[Path]:
    return sorted(list(d.glob("*.safetensors")) + list(d.glob("*.pt")))


def load_latent_shards(directory: str | Path) -> LatentSet:
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise DataError("latent shard directory not found", file=str(d))
    shards = _shard_files(d)
    if not shards:
        raise DataError("no *.safetensors or *.pt latent shards found", file=str(d))
    meta_path = d / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise DataError("missing meta.json (class_names, scaling_factor, shift_factor)", file=str(meta_path)) from None
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON: {e}", file=str(meta_path)) from None
    if not isinstance(meta.get("class_names"), list):
        raise DataError("meta.json needs a 'class_names' list", file=str(meta_path), key="class_names")
    lat, lab = [], []
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for s in shards:
        obj = _load_shard(s)
        for k in ("latents", "labels"):
            if k not in obj:
                raise DataError(f"shard lacks {k!r}", file=str(s))
        if obj["latents"].ndim != 4 or len(obj["latents"]) != len(obj["labels"]):
            raise DataError(f"bad shapes latents {tuple(obj['latents'].shape)}, labels {tuple(obj['labels'].shape)}",
                            file=str(s))
        lat.append(obj["latents"].float())
        lab.append(obj["labels"].long())
        h.update(s.name.encode())
        h.update(str(s.stat().st_size).encode())
        h.update(lat[-1][:4].numpy().tobytes())
    labels = torch.cat(lab)
    if "count" in meta and meta["count"] != len(labels):
        raise DataError(f"meta.json records {meta['count']} latents but the shards hold {len(labels)} "
                        "(a shard file is missing or extra)", file=str(meta_path))
    n_cls = len(meta["class_names"])
    if len(labels) and (labels.min() < 0 or labels.max() >= n_cls):
        raise DataError(f"labels outside [0, {n_cls})", file=str(d))
    return LatentSet(latents=torch.cat(lat), labels=labels, class_names=tuple(meta["class_names"]),
                     scaling_factor=float(meta.get("scaling_factor", 1.0)),
                     shift_factor=float(meta.get("shift_factor", 0.0) or 0.0), content_hash=h.hexdigest())


_OWN_SHARD = re.compile(r"shard-\d{5}\.safetensors")


class LatentShardWriter:
    """Streams latents into ``shard-NNNNN.safetensors`` files of ``shard_size`` latents each, so memory
    holds at most one shard (ImageNet-sized sets). Each shard is written atomically and ``meta.json``
    only by :meth:`finish`: a killed write leaves a directory that does not load as complete.

    Opening a directory removes an earlier write's ``meta.json`` first, then its shards; latent files
    this writer did not name are refused rather than deleted (they would be loaded with the new ones)."""

    def __init__(self, directory: str | Path, *, shard_size: int = 100_000):
        if shard_size < 1:
            raise UserError(f"must be >= 1, got {shard_size}", key="shard_size")
        self.directory = Path(directory).expanduser()
        self.shard_size = shard_size
        self.shards = 0
        self.count = 0  # latents written to shards so far
        self._latents: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self._buffered = 0
        self._clear()

    def _clear(self) -> None:
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        foreign = [p.name for p in _shard_files(d) if not _OWN_SHARD.fullmatch(p.name)]
        if foreign:
            raise DataError(f"holds latent files not written by snapgen ({foreign[0]}); use an empty directory",
                            file=str(d))
        (d / "meta.json").unlink(missing_ok=True)
        for p in _shard_files(d):
            p.unlink()

    def add(self, latents: torch.Tensor, labels: torch.Tensor) -> None:
        """Append unscaled latents (N, C, h, w) and their labels (N,); full shards are written at once."""
        if latents.ndim != 4 or len(latents) != len(labels):
            raise ValueError(f"bad shapes latents {tuple(latents.shape)}, labels {tuple(labels.shape)}")
        self._latents.append(latents.detach().float().cpu())
        self._labels.append(labels.detach().long().cpu())
        self._buffered += len(latents)
        while self._buffered >= self.shard_size:
            self._flush(self.shard_size)

    def _flush(self, n: int) -> None:
        from safetensors.torch import save_file

        # One buffered tensor is sliced, not concatenated: writing a large in-memory set copies nothing.
        lat = self._latents[0] if len(self._latents) == 1 else torch.cat(self._latents)
        lab = self._labels[0] if len(self._labels) == 1 else torch.cat(self._labels)
        with atomic_path(self.directory / f"shard-{self.shards:05d}.safetensors") as tmp:
            save_file({"latents": lat[:n].contiguous(), "labels": lab[:n].contiguous()}, str(tmp))
        self._latents, self._labels = [lat[n:]], [lab[n:]]
        self._buffered -= n
        self.shards += 1
        self.count += n

    def finish(self, class_names, *, scaling_factor: float = 1.0, shift_factor: float = 0.0,
               **provenance) -> None:
        """Write the last (partial) shard, then ``meta.json``: from here on the directory loads."""
        if self._buffered:
            self._flush(self._buffered)
        atomic_write_json(self.directory / "meta.json",
                          {"class_names": list(class_names), "scaling_factor": float(scaling_factor),
                           "shift_factor": float(shift_factor), "count": self.count, **provenance})


def write_latent_shards(directory: str | Path, latents: torch.Tensor, labels: torch.Tensor, class_names, *,
                        scaling_factor: float = 1.0, shift_factor: float = 0.0, shard_size: int = 100_000) -> None:
    """Write in-memory latents as safetensors shards (each atomically) and ``meta.json`` last."""
    writer = LatentShardWriter(directory, shard_size=shard_size)
    writer.add(latents, labels)
    writer.finish(class_names, scaling_factor=scaling_factor, shift_factor=shift_factor)
