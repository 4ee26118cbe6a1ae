"""The training engine: one loop for every run, its accumulation and hooks, no host sync per step,
the proxy = `snapgen train stage=base` at the proxy's size, budget and seed, and the code's shape
(no import cycle in snapgen/train, no test switch in production code)."""
from __future__ import annotations

import ast
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from proxy_helpers import small_spec
from snapgen.train import engine as engine_mod
from snapgen.train.batches import RandomBatches
from snapgen.train.engine import Engine, Evaluate, Hook, Recipe, StopTrial

ROOT = Path(__file__).resolve().parents[1]


# ---- the loop itself ------------------------------------------------------------------------------
class _Fixed:
    """A batch stream over a fixed list (state = position)."""

    def __init__(self, batches):
        self.batches, self.i = list(batches), 0

    def __next__(self):
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        return b

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, s):
        self.i = s["i"]


def _mse(net, batch, step):
    return ((net(batch["x"]) - batch["y"]) ** 2).mean(), {}


def _linear(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Linear(3, 2)


def test_accumulation_equals_one_big_batch():
    """Two micro-batches of 4 accumulate to the gradient of their batch of 8 (equal sizes: equal weights)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, generator=g), torch.randn(8, 2, generator=g)
    halves = [{"x": x[:4], "y": y[:4]}, {"x": x[4:], "y": y[4:]}]
    a, b = _linear(), _linear()
    Engine(a, _mse, _Fixed(halves), Recipe(steps=3, lr=0.1, accum=2, grad_clip=0.5)).run()
    Engine(b, _mse, _Fixed([{"x": x, "y": y}]), Recipe(steps=3, lr=0.1, grad_clip=0.5)).run()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6), (p, q)
    c = _linear()
    Engine(c, _mse, _Fixed([{"x": x, "y": y}]), Recipe(steps=3, lr=0.1)).run()  # clipping is active above
    assert not torch.allclose(c.weight, b.weight)


def test_schedule_clip_and_ema():
    r = Recipe(steps=10, lr=1.0, warmup_steps=4, schedule="cosine")
    cos = lambda s: 0.5 * (1 + math.cos(math.pi * s / 10))  # noqa: E731
    assert [r.lr_factor(s) for s in (0, 3, 5)] == [0.25 * cos(0), cos(3), cos(5)]
    assert Recipe(steps=10, lr=1.0, warmup_steps=4).lr_factor(1) == 0.5 and Recipe(steps=10, lr=1.0).lr_factor(0) == 1
    net = _linear()
    e = Engine(net, _mse, _Fixed([{"x": torch.ones(2, 3) * 100, "y": torch.zeros(2, 2)}]),
               Recipe(steps=1, lr=0.0, grad_clip=1.0, ema_decay=0.9))
    e.run()
    total = torch.sqrt(sum((p.grad ** 2).sum() for p in net.parameters()))
    assert abs(float(total) - 1.0) < 1e-4  # clipped to the max norm
    assert e.ema is not None and e.ema.num_updates == 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_and_the_fp16_gradient_scaler(dtype):
    """Under autocast the loop trains (fp16 through a GradScaler, whose state is checkpointed)."""
    g = torch.Generator().manual_seed(0)
    data = _Fixed([{"x": torch.randn(8, 3, generator=g), "y": torch.randn(8, 2, generator=g)}])
    net = _linear()
    before = net.weight.detach().clone()
    e = Engine(net, _mse, data, Recipe(steps=4, lr=0.1, grad_clip=1.0), dtype=dtype).run()
    assert (e.scaler is not None) == (dtype == torch.float16) and torch.isfinite(e.loss)
    assert not torch.equal(before, net.weight)
    if e.scaler is not None:
        assert e.state_dict()["grad_scaler"]["scale"] > 0


def test_hooks_stop_trial_and_final_evaluation():
    seen = []

    def stop_at_4(step, value):
        seen.append(step)
        if step == 4:
            raise StopTrial()

    ev = Evaluate(lambda e: float(e.step), steps=(2, 4, 6), on_eval=stop_at_4)
    e = Engine(_linear(), _mse, _Fixed([{"x": torch.ones(2, 3), "y": torch.zeros(2, 2)}]),
               Recipe(steps=8, lr=0.01), hooks=[ev]).run()
    assert e.stopped and e.step == 4 and ev.evaluations == [(2, 2.0), (4, 4.0)] and seen == [2, 4]
    ev = Evaluate(lambda e: float(e.step), steps=(2,), on_eval=lambda s, v: s == 8)  # the final answer is ignored
    e = Engine(_linear(), _mse, _Fixed([{"x": torch.ones(2, 3), "y": torch.zeros(2, 2)}]),
               Recipe(steps=8, lr=0.01), hooks=[ev]).run()
    assert not e.stopped and [s for s, _ in ev.evaluations] == [2, 8]


def test_exact_resume_of_the_engine_state():
    data = RandomBatches({"x": torch.randn(50, 3), "y": torch.randn(50, 2)}, 5, seed=1)
    full = Engine(_linear(), _mse, data, Recipe(steps=6, lr=0.05, ema_decay=0.5)).run()
    half = Engine(_linear(), _mse, RandomBatches({"x": data.tensors["x"], "y": data.tensors["y"]}, 5, seed=1),
                  Recipe(steps=3, lr=0.05, ema_decay=0.5)).run()
    state = half.state_dict()
    resumed = Engine(_linear(7), _mse, RandomBatches({"x": data.tensors["x"], "y": data.tensors["y"]}, 5, seed=9),
                     Recipe(steps=6, lr=0.05, ema_decay=0.5))
    resumed.load_state_dict(state)
    resumed.run()
    for p, q in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)
    assert torch.equal(full.ema.model.weight, resumed.ema.model.weight)


def test_non_finite_loss_is_caught_at_the_next_check():
    e = Engine(_linear(), _mse, _Fixed([{"x": torch.full((2, 3), float("nan")), "y": torch.zeros(2, 2)}]),
               Recipe(steps=30, lr=0.1, check_every=5))
    with pytest.raises(Exception, match=r"non-finite loss \(nan\) at step 5"):
        e.run()


# ---- no host synchronisation in the hot loop -----------------------------------------------------
SYNC_METHODS = ("item", "tolist", "__bool__", "__float__", "__int__", "numpy", "cpu")


@pytest.fixture
def count_syncs(monkeypatch):
    """Counts calls of the tensor methods that make the host wait for the device."""
    calls = []
    for name in SYNC_METHODS:
        orig = getattr(torch.Tensor, name)

        def spy(self, *a, _orig=orig, _name=name, **k):
            calls.append(_name)
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    return calls


def _tiny_unet(context_dim=16):
    from snapgen.spec import ArchSpec, StageSpec
    from snapgen.unet import SnapGenUNet

    spec = ArchSpec(stages=(StageSpec(16, layers=1, transformer_depth=0, cross_attention=False),
                            StageSpec(32, layers=1, transformer_depth=1)), name="t", context_dim=context_dim,
                    head_dim=8, norm_groups=8, latent_channels=4)
    return SnapGenUNet.from_spec(spec)


def _flow_batches(device, **kw):
    from snapgen.train.batches import FlowBatches

    g = torch.Generator().manual_seed(0)
    return FlowBatches(torch.randn(40, 4, 8, 8, generator=g), torch.arange(40) % 3, torch.randn(4, 5, 16, generator=g),
                       torch.randn(4, 16, generator=g), batch_size=4, null=3, p_uncond=0.2, seed=0, device=device, **kw)


def _objectives(device=torch.device("cpu")):
    """(name, student, objective, batches) for every objective the engine runs, at toy size, on ``device``."""
    from snapgen.train.kd import KnowledgeDistillation, Projections, TimestepScaler
    from snapgen.train.models import Student
    from snapgen.train.objectives import FlowMatching
    from snapgen.train.reconstruction import DecoderReconstruction, PatchDisc
    from snapgen.train.step_distill import StepDistillation
    from snapgen.train.teacher import Teacher

    torch.manual_seed(0)
    teacher = Teacher(_tiny_unet()).to(device)
    proj = Projections(["mid"], [32], [32])
    kd = KnowledgeDistillation(teacher, mode="timestep_aware", out_weight=1.0, feat_weight=0.5, teacher_features=[0],
                               scaler=TimestepScaler(["task", "out", "feat"]).to(device))
    probe = tuple(x.to(device) for x in (torch.zeros(1, 4, 8, 8), torch.full((1,), 500.0), torch.zeros(1, 5, 16),
                                         torch.zeros(1, 16)))
    sd = StepDistillation(teacher, pooled_dim=16, probe=probe, student_steps=4, teacher_substeps=2, kd_weight=1.0,
                          adv_weight=0.1, adv_start=0, disc_lr=1e-3, disc_feature=-1, device=device)
    dec = torch.nn.Sequential(torch.nn.Upsample(scale_factor=2), torch.nn.Conv2d(4, 1, 3, padding=1))
    rec = DecoderReconstruction(disc=PatchDisc(1, 8).to(device), adv_weight=0.1)
    images = RandomBatches({"z": torch.randn(20, 4, 8, 8), "x": torch.randn(20, 1, 16, 16)}, 4, seed=0, device=device)
    return [("flow_matching", Student(_tiny_unet()).to(device), FlowMatching(), _flow_batches(device)),
            ("knowledge_distillation", Student(_tiny_unet(), proj).to(device), kd, _flow_batches(device)),
            ("step_distillation", Student(_tiny_unet()).to(device), sd, _flow_batches(device, timesteps=sd.timesteps)),
            ("decoder_reconstruction", dec.to(device), rec, images)]


@pytest.mark.parametrize("which", range(4), ids=[o[0] for o in _objectives()])
def test_hot_loop_never_syncs_with_the_host(which, count_syncs):
    """Every objective's training step (batch, forward, backward, clip, AdamW, EMA, its own discriminator
    step) reads nothing back from the device; the loss check reads one value."""
    _, model, objective, batches = _objectives()[which]
    e = Engine(model, objective, batches, Recipe(steps=100, lr=1e-3, grad_clip=1.0, ema_decay=0.9, accum=2))
    e.train_step()  # first step: lazy optimiser state
    count_syncs.clear()
    for _ in range(3):
        e.train_step()
    assert count_syncs == [], count_syncs
    e.check()
    assert count_syncs == ["__float__"]


# ---- one loop for every run ---------------------------------------------------------------------
@pytest.fixture
def engine_runs(monkeypatch):
    """Records every Engine.run (the objective's class) and every optimiser step taken outside one,
    other than an objective's own discriminator step."""
    runs, stray = [], []
    inside = []
    orig_run, orig_step = Engine.run, torch.optim.AdamW.step

    def run(self):
        runs.append(getattr(self.objective, "__name__", type(self.objective).__name__))
        inside.append(self)
        try:
            return orig_run(self)
        finally:
            inside.pop()

    def step(self, *a, **k):
        if not inside:
            stray.append(self)
        return orig_step(self, *a, **k)

    monkeypatch.setattr(Engine, "run", run)
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    return runs, stray


def _tiny_train_overrides(data_dir, out):
    from test_train import TINY

    return [*TINY, f"proxy.data_path={data_dir}", "proxy.ae={steps: 10, batch_size: 16, eval_images: 100}",
            "proxy.classifier={steps: 10, batch_size: 32, widths: [8, 16], feature_dim: 16}", "eval.num_samples=100",
            "eval.sample_steps=2", "train.steps=2", "train.batch_size=8", "train.log_every=1", "train.ckpt_every=0",
            f"output_dir={out}"]


def test_one_optimiser_step_loop_for_every_run(engine_runs, tmp_path, data_dir_tiny, proxy_cache, monkeypatch):
    """The proxy, every `snapgen train` stage and the decoder proxy are engine runs; no optimiser steps
    outside one."""
    from archsearch.objectives.decoder_quality import DecoderProxyConfig, decoder_quality
    from archsearch.objectives.decoder_quality import _assets as _decoder_assets
    from proxy_helpers import tiny_config
    from snapgen.autoencoder import AEConfig
    from snapgen.presets import load_decoder_preset
    from snapgen.proxy import prepare_assets, run_proxy
    from snapgen.train.config import load_config
    from snapgen.train.stages import train

    runs, stray = engine_runs
    tiny_ae = AEConfig(steps=5, block_out_channels=(8, 8, 8, 8), norm_num_groups=4, eval_images=50)
    dec_cfg = DecoderProxyConfig(steps=2, eval_every=1, num_samples=32, batch_size=8, width_mult=0.125,
                                 train_images=500, ae=tiny_ae, data_path=str(data_dir_tiny), progress=False)
    # the cached assets (autoencoders, metric classifier), where this session has not built them yet
    prepare_assets(tiny_config(data_dir_tiny))
    _decoder_assets(dec_cfg.data_path, dec_cfg.ae, dec_cfg.num_samples, dec_cfg.train_images)
    assert set(runs) <= {"_VAELoss", "cross_entropy"}, runs  # asset builders are engine runs too
    runs.clear()
    run_proxy(small_spec(), tiny_config(data_dir_tiny, steps=2), seed=0)
    assert runs == ["FlowMatching"]
    cfg = ROOT / "configs" / "embedded-base.yaml"
    base = _tiny_train_overrides(data_dir_tiny, tmp_path / "base")
    train(load_config(cfg, [*base, "stage=base"]))
    kd = _tiny_train_overrides(data_dir_tiny, tmp_path / "kd")
    train(load_config(cfg, [*kd, "stage=kd", f"teacher.path={tmp_path / 'base'}", "kd.teacher_features=[0,1]"]))
    sd = _tiny_train_overrides(data_dir_tiny, tmp_path / "sd")
    train(load_config(cfg, [*sd, "stage=step_distill", f"teacher.path={tmp_path / 'base'}",
                            f"step_distill.init={tmp_path / 'base'}"]))
    dec = _tiny_train_overrides(data_dir_tiny, tmp_path / "dec")
    train(load_config(cfg, [*dec, "stage=decoder"]))
    decoder_quality(load_decoder_preset(None, "tiny"), dec_cfg, seed=0)
    assert runs == ["FlowMatching", "FlowMatching", "KnowledgeDistillation", "StepDistillation",
                    "DecoderReconstruction", "DecoderReconstruction"], runs
    assert stray == []
    for d in ("kd", "sd", "dec"):
        rows = [json.loads(x) for x in (tmp_path / d / "stats.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2]
    sd_row = json.loads((tmp_path / "sd" / "stats.jsonl").read_text().splitlines()[-1])
    assert {"kd", "d_loss", "g_adv"} <= set(sd_row)  # its discriminator stepped inside the objective


@pytest.fixture(scope="module")
def data_dir_tiny(tmp_path_factory):
    from proxy_helpers import write_subset

    return write_subset(tmp_path_factory.mktemp("fm-engine"), 1000, 200)


@pytest.mark.slow
def test_train_base_equals_the_proxy(small_proxy, fmnist_small, tmp_path):
    """`snapgen train stage=base` at the proxy's size, budget and seed trains and scores exactly as
    `snapgen proxy` does: one recipe, one loop (CPU: to 1e-6; bit-identical in practice)."""
    from test_train import small_proxy as small_proxy_overrides

    from snapgen.proxy import run_proxy
    from snapgen.train.config import load_config
    from snapgen.train.stages import train

    cfg = replace(small_proxy, steps=20)
    for seed in (0, 3):
        pr = run_proxy(small_spec(), cfg, seed=seed)
        arch = yaml.safe_dump(small_spec().to_dict(), default_flow_style=True, width=10**9).strip()
        tc = load_config(None, [f"++arch={arch}", *small_proxy_overrides(fmnist_small), "stage=base",
                                f"train.steps={cfg.steps}", f"train.batch_size={cfg.batch_size}", f"train.lr={cfg.lr}",
                                f"train.ema_decay={cfg.ema_decay}", f"seed={seed}", "train.progress=false",
                                f"output_dir={tmp_path / str(seed)}"])  # num_samples: the proxy section's
        res = train(tc)
        assert res["steps"] == pr.steps == cfg.steps
        assert abs(res["value"] - pr.value) <= 1e-6, (res["value"], pr.value)
    assert abs(res["value"] - run_proxy(small_spec(), cfg, seed=0).value) > 1e-6  # the seed matters


def test_bf16_autocast_on_cpu_is_a_real_run(data_dir_tiny, proxy_cache):
    """precision=bf16 runs the loop under bf16 autocast (not silently fp32): a different loss."""
    from proxy_helpers import tiny_config
    from snapgen.proxy import run_proxy

    r32 = run_proxy(small_spec(), tiny_config(data_dir_tiny, steps=3, precision="fp32"), seed=0)
    r16 = run_proxy(small_spec(), tiny_config(data_dir_tiny, steps=3, precision="bf16"), seed=0)
    assert r32.precision == "fp32" and r16.precision == "bf16" and r16.device == "cpu"
    assert r16.final_loss != r32.final_loss and abs(r16.final_loss - r32.final_loss) < 0.1 * r32.final_loss


# ---- the code's shape -----------------------------------------------------------------------------
def _imports(path: Path, package: str) -> set[str]:
    """Modules of ``package`` that ``path`` imports, at any depth (function-level imports too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == package:
                out.update(f"{package}.{a.name}" for a in node.names)
            elif node.module.startswith(package + "."):
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith(package + "."))
    return out


def test_no_import_cycle_in_snapgen_train():
    pkg = "snapgen.train"
    mods = {f"{pkg}.{p.stem}": p for p in (ROOT / "snapgen" / "train").glob("*.py") if p.stem != "__init__"}
    graph = {m: {d for d in _imports(p, pkg) if d in mods and d != m} for m, p in mods.items()}
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for d in graph[m]:
            assert state.get(d) != 1, f"import cycle: {' -> '.join(path + [m, d])}"
            if d not in state:
                visit(d, path + [m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])
    assert graph[f"{pkg}.stages"] >= {f"{pkg}.engine", f"{pkg}.config"}  # the graph is read, not empty


def test_no_test_switch_in_production_code():
    offenders = []
    for p in [*(ROOT / "snapgen").rglob("*.py"), *(ROOT / "archsearch").rglob("*.py")]:
        text = p.read_text()
        if "KILL_AFTER" in text or "SNAPGEN_TEST" in text or "PYTEST_CURRENT_TEST" in text:
            offenders.append(str(p.relative_to(ROOT)))
    assert offenders == []


def test_backward_and_optimiser_steps_only_in_the_engine_and_objectives():
    """Outside the engine, only an objective's own discriminator update calls backward()."""
    allowed = {"snapgen/train/engine.py", "snapgen/train/step_distill.py", "snapgen/train/reconstruction.py"}
    found = set()
    for p in [*(ROOT / "snapgen").rglob("*.py"), *(ROOT / "archsearch").rglob("*.py")]:
        if ".backward(" in p.read_text():
            found.add(str(p.relative_to(ROOT)))
    assert found <= allowed and "snapgen/train/engine.py" in found, found
    assert Hook.due(Hook(), 1, None) is False and engine_mod.SCHEDULES == ("constant", "cosine")
