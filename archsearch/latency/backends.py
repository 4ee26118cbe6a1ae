"""Measurement backends behind one interface.

A backend turns ``(module, example inputs)`` into a zero-argument callable that runs one forward
pass on the target, plus a ``sync`` that waits for the device; :func:`~archsearch.latency.timing.time_callable`
times it. ``torch`` runs on cpu / cuda / mps, eager or ``torch.compile``; ``coreml`` converts with
coremltools everywhere and times ``MLModel.predict`` per compute unit on macOS only (elsewhere the
result says "not timed": Core ML predictions need macOS, and no number is made up).

onnxruntime is not a backend: on CPU it times the same MLAS/oneDNN kernels as torch-cpu within a
few percent for conv/linear-heavy UNets, and on Apple devices Core ML is what ships, so it would
add an export path without adding a device.
"""
from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn

from snapgen.errors import UserError

BACKENDS = ("torch", "coreml")
TORCH_DEVICES = ("cpu", "cuda", "mps")
TORCH_MODES = ("eager", "compile")
COREML_UNITS = ("all", "cpu_only", "cpu_and_gpu", "cpu_and_ne")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def default_threads() -> int:
    """torch's default intra-op thread count (physical cores); fixed and recorded per measurement."""
    return torch.get_num_threads()


def machine_info() -> dict[str, Any]:
    info = {"platform": platform.platform(), "machine": platform.machine(), "processor": platform.processor() or "",
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__}
    try:
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:  # not on every OS
        pass
    return info


@dataclass
class Prepared:
    """What a backend hands to the timer."""

    fn: Callable[[], Any] | None  # None: this backend cannot time here (see ``note``)
    sync: Callable[[], None]
    note: str = ""
    module: nn.Module | None = None  # the module actually run (torch): hooks go here


class Backend:
    name = "base"

    def __init__(self, device: str | None = None, *, threads: int | None = None, mode: str = "eager",
                 dtype: str = "float32", clock: str = "wall"):
        self.threads = int(threads) if threads else default_threads()
        if self.threads <= 0:
            raise UserError(f"must be a positive integer, got {threads}", key="--threads")
        self.mode = mode
        self.dtype = dtype
        self.device = self._check_device(device)
        if clock not in ("wall", "cpu"):
            raise UserError(f"unknown clock {clock!r}; allowed: wall, cpu", key="--clock")
        if clock == "cpu" and (self.name != "torch" or self.device != "cpu"):
            raise UserError("--clock cpu (process CPU time) is for the torch backend on --device cpu only",
                            key="--clock")
        self.clock = clock

    # -- overridden ---------------------------------------------------------------------------
    def _check_device(self, device: str | None) -> str:
        raise NotImplementedError

    @property
    def can_time(self) -> bool:
        return True

    def prepare(self, module: nn.Module, inputs: tuple, input_names: list[str] | None = None) -> Prepared:
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": self.device, "mode": self.mode, "threads": self.threads,
                "dtype": self.dtype, "clock": self.clock}


class TorchBackend(Backend):
    name = "torch"

    def _check_device(self, device: str | None) -> str:
        device = device or "cpu"
        kind = device.split(":")[0]
        if kind not in TORCH_DEVICES:
            raise UserError(f"unknown torch device {device!r}; allowed: {', '.join(TORCH_DEVICES)} (cuda:N too)",
                            key="--device")
        if kind == "cuda" and not torch.cuda.is_available():
            raise UserError("device 'cuda' is not available on this machine (torch.cuda.is_available() is False); "
                            "use --device cpu", key="--device")
        if kind == "cuda" and ":" in device:
            idx = device.split(":", 1)[1]
            if not idx.isdigit() or int(idx) >= torch.cuda.device_count():
                raise UserError(f"no such CUDA device {device!r}; this machine has {torch.cuda.device_count()}",
                                key="--device")
        if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UserError("device 'mps' is not available on this machine (torch.backends.mps.is_available() is "
                            "False); use --device cpu", key="--device")
        if self.mode not in TORCH_MODES:
            raise UserError(f"unknown mode {self.mode!r}; allowed: {', '.join(TORCH_MODES)}", key="--mode")
        if self.dtype not in DTYPES:
            raise UserError(f"unknown dtype {self.dtype!r}; allowed: {', '.join(DTYPES)}", key="--dtype")
        return device

    def sync(self) -> None:
        kind = self.device.split(":")[0]
        if kind == "cuda":
            torch.cuda.synchronize(self.device)
        elif kind == "mps":
            torch.mps.synchronize()

    def prepare(self, module: nn.Module, inputs: tuple, input_names: list[str] | None = None) -> Prepared:
        dtype = DTYPES[self.dtype]
        module = module.to(self.device).eval()
        if dtype != torch.float32:
            module = module.to(dtype=dtype)
        args = tuple(None if x is None else (x.to(self.device, dtype=dtype) if x.is_floating_point()
                                              else x.to(self.device)) for x in inputs)
        run = torch.compile(module) if self.mode == "compile" else module

        def fn():
            with torch.inference_mode():
                return run(*args)

        return Prepared(fn=fn, sync=self.sync, module=module)


class CoreMLBackend(Backend):
    """coremltools conversion (fp16 ML program) and, on macOS, ``MLModel.predict`` timing.

    ``device`` is the Core ML compute unit: all, cpu_only, cpu_and_gpu, cpu_and_ne.
    """

    name = "coreml"

    def _check_device(self, device: str | None) -> str:
        device = (device or "all").lower()
        if device not in COREML_UNITS:
            raise UserError(f"unknown Core ML compute unit {device!r}; allowed: {', '.join(COREML_UNITS)}",
                            key="--device")
        if self.mode != "eager":
            raise UserError("--compile applies to the torch backend only", key="--mode")
        try:
            import coremltools  # noqa: F401
        except ImportError:
            raise UserError("the coreml backend needs coremltools: pip install 'snapgen-archsearch[export]'",
                            key="--backend") from None
        return device

    @property
    def can_time(self) -> bool:
        return sys.platform == "darwin"

    def prepare(self, module: nn.Module, inputs: tuple, input_names: list[str] | None = None) -> Prepared:
        import coremltools as ct

        from snapgen.export.coreml import convert_module

        names = input_names or [f"input_{i}" for i in range(len(inputs))]
        pairs = [(n, x) for n, x in zip(names, inputs) if x is not None]
        mlmodel = convert_module(module.float().eval(), tuple(x for _, x in pairs), [n for n, _ in pairs])
        if not self.can_time:
            return Prepared(fn=None, sync=lambda: None,
                            note=f"converted to Core ML; not timed: Core ML predictions need macOS (this is "
                                 f"{platform.system()})")
        import tempfile

        # Reload with the requested compute unit (predictions are compiled per unit).
        tmp = tempfile.mkdtemp(prefix="snapgen-coreml-")
        path = os.path.join(tmp, "model.mlpackage")
        mlmodel.save(path)
        unit = getattr(ct.ComputeUnit, self.device.upper())
        loaded = ct.models.MLModel(path, compute_units=unit)
        feed = {n: x.detach().cpu().numpy().astype("float32") for n, x in pairs}
        return Prepared(fn=lambda: loaded.predict(feed), sync=lambda: None)


_BACKENDS = {"torch": TorchBackend, "coreml": CoreMLBackend}


def get_backend(name: str, device: str | None = None, *, threads: int | None = None, mode: str = "eager",
                dtype: str = "float32", clock: str = "wall") -> Backend:
    if name not in _BACKENDS:
        raise UserError(f"unknown backend {name!r}; allowed: {', '.join(BACKENDS)}", key="--backend")
    return _BACKENDS[name](device, threads=threads, mode=mode, dtype=dtype, clock=clock)
