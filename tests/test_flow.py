"""Rectified flow: interpolation, targets, timestep sampling, CFG dropout, EMA, samplers."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from snapgen.flow import EMA, drop_condition, flow_loss, interpolate, logit_normal, sample, velocity_target


def test_interpolation_convention_and_velocity():
    x0, noise = torch.randn(3, 2), torch.randn(3, 2)
    assert torch.allclose(interpolate(x0, noise, torch.zeros(3)), x0)
    assert torch.allclose(interpolate(x0, noise, torch.ones(3)), noise)  # t = 1 is pure noise (SD3)
    t = torch.tensor([0.3, 0.5, 0.9])
    eps = 1e-3
    fd = (interpolate(x0, noise, t + eps) - interpolate(x0, noise, t)) / eps  # d x_t / dt
    assert torch.allclose(fd, velocity_target(x0, noise), atol=1e-3)


def test_logit_normal_is_seeded_and_centred():
    a = logit_normal(20000, generator=torch.Generator().manual_seed(1))
    b = logit_normal(20000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and 0 < a.min() and a.max() < 1
    assert abs(a.median().item() - 0.5) < 0.02 and ((a > 0.2) & (a < 0.8)).float().mean() > 0.8


def test_condition_dropout_rate():
    y = torch.zeros(20000, dtype=torch.long)
    d = drop_condition(y, 0.1, 10, generator=torch.Generator().manual_seed(0))
    assert set(d.unique().tolist()) == {0, 10} and abs((d == 10).float().mean().item() - 0.1) < 0.01
    assert torch.equal(drop_condition(y, 0.0, 10), y)


def test_ema_warmup_and_update():
    m = nn.Linear(2, 2, bias=False)
    ema = EMA(m, decay=0.9)
    w0 = m.weight.detach().clone()
    with torch.no_grad():
        m.weight.add_(1.0)
    ema.update(m)  # warm-up decay min(0.9, 2/11)
    d = 2 / 11
    assert torch.allclose(ema.model.weight, d * w0 + (1 - d) * (w0 + 1))
    assert not ema.model.weight.requires_grad
    for _ in range(200):
        ema.update(m)
    assert torch.allclose(ema.model.weight, m.weight, atol=1e-6)


class _PointMass(nn.Module):
    """Exact velocity for data concentrated at ``c`` (per condition): v(x, t) = (x - c) / t."""

    def __init__(self):
        super().__init__()

    def forward(self, x, timestep, c):
        t = (timestep / 1000).view(-1, *([1] * (x.ndim - 1)))
        return (x - c) / t


@pytest.mark.parametrize("method,steps", [("euler", 1), ("euler", 7), ("heun", 3)])
def test_samplers_reach_the_data_and_apply_cfg(method, steps):
    noise = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    c1, c0 = torch.full((4, 3), 2.0), torch.full((4, 3), -1.0)
    out = sample(_PointMass(), noise, {"c": c1}, steps=steps, method=method)
    assert torch.allclose(out, c1, atol=1e-5)
    # CFG extrapolates from the unconditional towards the conditional target: c0 + s (c1 - c0)
    out = sample(_PointMass(), noise, {"c": c1}, {"c": c0}, steps=steps, method=method, cfg_scale=1.5)
    assert torch.allclose(out, c0 + 1.5 * (c1 - c0), atol=1e-4)


def test_sampler_counts_evaluations_and_shift():
    calls = []

    class Count(_PointMass):
        def forward(self, x, timestep, c):
            calls.append(float(timestep[0]))
            return super().forward(x, timestep, c)

    noise = torch.randn(2, 3)
    sample(Count(), noise, {"c": torch.zeros(2, 3)}, steps=4, method="heun")
    assert len(calls) == 2 * 4 - 1
    calls.clear()
    sample(Count(), noise, {"c": torch.zeros(2, 3)}, steps=4, shift=3.0)
    assert calls[0] == 1000 and calls[1] > 750  # shifted schedule spends more steps at high noise


def test_flow_loss_zero_for_exact_model():
    x0 = torch.full((5, 3), 2.0)
    noise = torch.randn(5, 3)
    t = torch.rand(5) * 0.9 + 0.05
    assert flow_loss(_PointMass(), x0, t, noise, c=x0).item() < 1e-10


class _Swirl(nn.Module):
    """A non-linear velocity field (the exact path matters, not only where it ends)."""

    def forward(self, x, timestep, c):
        t = (timestep / 1000).view(-1, *([1] * (x.ndim - 1)))
        return torch.tanh(x * (1 + t)) - c * t


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 8, 13])
def test_euler_equals_diffusers_flow_match_euler_scheduler(steps):
    """snapgen.flow.sample's Euler is diffusers' FlowMatchEulerDiscreteScheduler on the sigmas
    linspace(1, 1/N, N) (what SnapGenPipeline sets): bit for bit when the step sizes are exact binary
    fractions (N a power of two), to float32 rounding otherwise."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from snapgen.pipeline import flow_sigmas

    noise = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(steps))
    c = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(99))
    ours = sample(_Swirl(), noise, {"c": c}, steps=steps)
    sch = FlowMatchEulerDiscreteScheduler()
    sch.set_timesteps(sigmas=flow_sigmas(steps))
    x = noise
    for t in sch.timesteps:
        x = sch.step(_Swirl()(x, t.expand(len(x)), c), t, x, return_dict=False)[0]
    if steps & (steps - 1) == 0:
        assert torch.equal(ours, x)
    else:
        assert (ours - x).abs().max() < 1e-5
    assert len(sch.timesteps) == steps and sch.timesteps[0] == 1000.0
