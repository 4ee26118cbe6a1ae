"""Pre-encoded latent shards, for runs where encoding images on the fly would dominate (ImageNet).

A shard directory holds ``*.safetensors`` (preferred) or ``*.pt`` files, each with a ``latents``
tensor (N, C, h, w) of *unscaled* autoencoder latents and a ``labels`` tensor (N,), plus a
``meta.json`` with ``class_names`` and the autoencoder's ``scaling_factor`` / ``shift_factor``.
``.pt`` shards are loaded with ``weights_only=True``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from snapgen.cache import atomic_path, atomic_write_json
from snapgen.errors import DataError


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


def load_latent_shards(directory: str | Path) -> LatentSet:
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise DataError("latent shard directory not found", file=str(d))
    shards = sorted(list(d.glob("*.safetensors")) + list(d.glob("*.pt")))
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
    n_cls = len(meta["class_names"])
    if len(labels) and (labels.min() < 0 or labels.max() >= n_cls):
        raise DataError(f"labels outside [0, {n_cls})", file=str(d))
    return LatentSet(latents=torch.cat(lat), labels=labels, class_names=tuple(meta["class_names"]),
                     scaling_factor=float(meta.get("scaling_factor", 1.0)),
                     shift_factor=float(meta.get("shift_factor", 0.0) or 0.0), content_hash=h.hexdigest())


def write_latent_shards(directory: str | Path, latents: torch.Tensor, labels: torch.Tensor, class_names, *,
                        scaling_factor: float = 1.0, shift_factor: float = 0.0, shard_size: int = 100_000) -> None:
    """Write latents as safetensors shards (each atomically) and ``meta.json`` last."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for i in range(0, len(latents), shard_size):
        with atomic_path(d / f"shard-{i // shard_size:05d}.safetensors") as tmp:
            save_file({"latents": latents[i:i + shard_size].contiguous(),
                       "labels": labels[i:i + shard_size].contiguous()}, str(tmp))
    atomic_write_json(d / "meta.json", {"class_names": list(class_names), "scaling_factor": scaling_factor,
                                        "shift_factor": shift_factor})
