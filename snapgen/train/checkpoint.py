"""Training-state checkpoints (EDM's state dumps, DiT's step-named files).

``checkpoints/ckpt-<step>.pt`` holds everything an exact resume needs (the engine's
``state_dict``): the trained module, the optimiser and LR scheduler, the EMA, the gradient scaler,
the objective's own state (running statistics, a discriminator and its optimiser), the data
stream's generator state (the data position) and the torch RNG states. Files are written atomically (temp
file + ``os.replace``) and read with ``torch.load(weights_only=True)``; a file that does not load,
or loads but is not ours, is one clear error line and is never overwritten.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from snapgen.cache import atomic_torch_save
from snapgen.errors import UserError

FORMAT = "snapgen-train/2"  # /2: the engine's state layout
_NAME = re.compile(r"^ckpt-(\d+)\.pt$")


def ckpt_dir(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    d = ckpt_dir(output_dir)
    if not d.is_dir():
        return []
    out = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return sorted(out)


def save(output_dir: Path, step: int, state: dict, keep: int = 2) -> Path:
    path = ckpt_dir(output_dir) / f"ckpt-{step:07d}.pt"
    atomic_torch_save({"format": FORMAT, "step": int(step), **state}, path)
    for _, old in list_checkpoints(output_dir)[:-max(1, keep)]:
        old.unlink(missing_ok=True)
    return path


def load(path: str | Path, *, stage: str | None = None) -> dict:
    """Load a checkpoint written by :func:`save` (weights only); one-line errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UserError("checkpoint not found", file=str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a zip/pickle, pickled code objects
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise UserError(f"corrupt or unsafe checkpoint (cannot be loaded with weights_only=True): {first}",
                        file=str(path)) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"not a snapgen training checkpoint (expected format {FORMAT!r})", file=str(path))
    if stage is not None and state.get("stage") != stage:
        raise UserError(f"checkpoint of stage {state.get('stage')!r}, this run is stage {stage!r}", file=str(path))
    return state


def latest(output_dir: Path, *, stage: str | None = None) -> dict | None:
    ckpts = list_checkpoints(output_dir)
    return load(ckpts[-1][1], stage=stage) if ckpts else None
