"""Where a run computes: device names, their presence, precision (autocast), and memory.

Device names (``ProxyConfig.device``, ``train.device``, the study's ``proxy.device``):
``auto`` (CUDA if present, then MPS, then CPU), ``cpu``, ``cuda`` (the local rank's GPU under
torchrun, else the first), ``cuda:N``, ``mps``. Asking for one that is absent is a
:class:`~snapgen.errors.UserError` (one line, exit 2) raised while the configuration is checked,
before anything is written. Precision: ``auto`` (bf16 autocast on CUDA, fp32 elsewhere), ``fp32``,
``bf16`` (autocast), ``fp16`` (autocast + a gradient scaler).
"""
from __future__ import annotations

import contextlib
import gc
import os
import re
import traceback

import torch

from snapgen.errors import TrainingError, UserError

DEVICES = "auto, cpu, cuda, cuda:N, mps"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_NAME = re.compile(r"^(auto|cpu|mps|cuda)(?::(\d+))?$")


class OutOfMemory(TrainingError):
    """The device ran out of memory (the run's references are dropped and its cached memory freed)."""


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def check_device(name: str, *, key: str = "device", file: str | None = None) -> str:
    """``name`` if it is a known device name present on this machine; else one clear error."""
    m = _NAME.match(str(name))
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        raise UserError(f"unknown device {name!r}; allowed: {DEVICES}", file=file, key=key)
    kind, index = m.group(1), m.group(2)
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{name} is not available on this machine (torch.cuda.is_available() is False); "
                            f"use auto or cpu", file=file, key=key)
        n = torch.cuda.device_count()
        if index is not None and int(index) >= n:
            raise UserError(f"{name} is not available on this machine ({n} CUDA device(s) visible: "
                            f"{', '.join(f'cuda:{i}' for i in range(n))})", file=file, key=key)
    if kind == "mps" and not _mps_available():
        raise UserError(f"{name} is not available on this machine (torch.backends.mps.is_available() is False); "
                        f"use auto or cpu", file=file, key=key)
    return name


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device a (checked) name denotes on this machine."""
    check_device(name)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local % torch.cuda.device_count())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if name == "cuda":
        return torch.device("cuda", local % torch.cuda.device_count())
    return torch.device(name)


def check_precision(precision: str, *, key: str = "precision", file: str | None = None) -> str:
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; allowed: {', '.join(PRECISIONS)}", file=file, key=key)
    return precision


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (None: full fp32, no autocast)."""
    check_precision(precision)
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def describe(device: torch.device) -> str:
    """The device as a user names it: a pinned worker's ``cuda:0`` is the GPU that
    ``CUDA_VISIBLE_DEVICES`` maps it to (``cuda:1`` for ``CUDA_VISIBLE_DEVICES=1``)."""
    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else 0
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if index < len(visible) and visible[index].isdigit():
        return f"cuda:{visible[index]}"
    return f"cuda:{index}"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def release_memory() -> None:
    """Free what a failed run left: unreachable tensors, then the allocator's cached blocks."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    if _mps_available():
        torch.mps.empty_cache()


def out_of_memory_as_error(fn, what: str, device: torch.device):
    """``fn()``, with a ``torch.OutOfMemoryError`` turned into :class:`OutOfMemory` naming ``what``
    and the device. The failed call's frames are cleared and the allocator's cache emptied first,
    and the new error does not chain the old one, so nothing keeps the run's tensors alive."""
    try:
        return fn()
    except torch.OutOfMemoryError as e:
        traceback.clear_frames(e.__traceback__)
        msg = f"out of memory {what} on {describe(device)}"
    release_memory()
    raise OutOfMemory(msg)
