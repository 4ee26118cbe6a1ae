"""Rectified flow (flow matching) as in SD3 and the paper (§3.3).

Convention: ``x_t = (1 - t) * x0 + t * noise`` with ``t`` in [0, 1] (t = 1 is pure noise); the
network predicts the velocity ``v = noise - x0`` and is called with ``t * 1000`` (diffusers'
timestep range). Training timesteps are logit-normal (SD3's ``lognorm(0, 1)``); the condition is
dropped (replaced by the null condition) with probability ``p_uncond`` for classifier-free
guidance. Samplers integrate ``dx/dt = v`` from t = 1 to t = 0 with Euler or Heun steps, with CFG,
for any number of steps, seeded through an explicit ``torch.Generator``.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn as nn


def logit_normal(n: int, *, mean: float = 0.0, std: float = 1.0, generator: torch.Generator | None = None,
                 device=None) -> torch.Tensor:
    """t = sigmoid(N(mean, std^2)), shape (n,)."""
    return torch.sigmoid(mean + std * torch.randn(n, generator=generator, device=device))


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = t.view(-1, *([1] * (x0.ndim - 1)))
    return (1 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x0


def drop_condition(labels: torch.Tensor, p_uncond: float, null_index: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace labels by ``null_index`` with probability ``p_uncond`` (CFG condition dropout)."""
    if p_uncond <= 0:
        return labels
    drop = torch.rand(labels.shape, generator=generator, device=labels.device) < p_uncond
    return torch.where(drop, torch.full_like(labels, null_index), labels)


def velocity(model: nn.Module, x: torch.Tensor, t1000: torch.Tensor, **cond) -> torch.Tensor:
    """``model(x, t1000, **cond)`` as a tensor: diffusers-style models return an output object
    (``.sample``, the first element) or a tuple; plain functions a tensor."""
    out = model(x, t1000, **cond)
    return out if isinstance(out, torch.Tensor) else out[0]
def flow_error(pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared velocity error (float32), shape (B,): the one reduction every
    flow-matching loss uses (the batch mean of it; KD weighs it per sample first)."""
    return ((pred.float() - velocity_target(x0, noise).float()) ** 2).flatten(1).mean(1)


def flow_loss(model: nn.Module, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, **cond) -> torch.Tensor:
    """Mean squared velocity error at timesteps ``t`` (each in [0, 1])."""
    return flow_error(velocity(model, interpolate(x0, noise, t), t * 1000, **cond), x0, noise).mean()


class EMA:
    """Exponential moving average of a model's parameters (buffers copied), with the usual warm-up
    ``decay_t = min(decay, (1 + t) / (10 + t))`` so that short proxy runs are not dominated by the
    random initialisation. ``ema.model`` is a frozen copy to sample from."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self._src = [p for p in model.parameters()]
        self._dst = [p for p in self.model.parameters()]

    @torch.no_grad()
    def update(self, model: nn.Module | None = None) -> None:
        self.num_updates += 1
        d = self.decay
        if self.warmup:
            d = min(d, (1 + self.num_updates) / (10 + self.num_updates))
        src = self._src if model is None else list(model.parameters())
        torch._foreach_lerp_(self._dst, src, 1.0 - d)  # ema += (1 - d) * (p - ema), one fused op

    @torch.no_grad()
    def sync_buffers(self, model: nn.Module) -> None:
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.num_updates = state["num_updates"]
        self.model.load_state_dict(state["model"])


def guided_velocity(model: nn.Module, x: torch.Tensor, t: float, cond: dict, uncond: dict | None,
                    cfg_scale: float) -> torch.Tensor:
    """Velocity at scalar time ``t`` with classifier-free guidance (one batched forward for both)."""
    ts = torch.full((x.shape[0],), t * 1000.0, device=x.device)
    if uncond is None or cfg_scale == 1.0:
        return velocity(model, x, ts, **cond)
    both = {k: torch.cat([cond[k], uncond[k]]) for k in cond}
    v_c, v_u = velocity(model, torch.cat([x, x]), torch.cat([ts, ts]), **both).chunk(2)
    return v_u + cfg_scale * (v_c - v_u)


@torch.no_grad()
def sample(model: nn.Module, noise: torch.Tensor, cond: dict, uncond: dict | None = None, *, steps: int = 20,
           cfg_scale: float = 1.0, method: str = "euler", shift: float = 1.0,
           callback: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Integrate from ``noise`` (t = 1) to data (t = 0).

    ``cond`` / ``uncond`` are keyword arguments of the model (e.g. ``encoder_hidden_states``,
    ``pooled``) for the conditional and the null condition. ``shift`` > 1 spends more steps at high
    noise (SD3's timestep shift ``t' = s t / (1 + (s - 1) t)``). Heun uses ``2 * steps - 1``
    evaluations (no correction on the last step to t = 0)."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    if method not in ("euler", "heun"):
        raise ValueError(f"unknown sampler {method!r}; allowed: euler, heun")
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    if shift != 1.0:
        ts = shift * ts / (1 + (shift - 1) * ts)
    ts = ts.tolist()
    x = noise
    for i in range(steps):
        t, t_next = ts[i], ts[i + 1]
        v = guided_velocity(model, x, t, cond, uncond, cfg_scale)
        x_next = x + (t_next - t) * v
        if method == "heun" and t_next > 0:
            v2 = guided_velocity(model, x_next, t_next, cond, uncond, cfg_scale)
            x_next = x + (t_next - t) * 0.5 * (v + v2)
        x = x_next
        if callback is not None:
            callback(i, x)
    return x
