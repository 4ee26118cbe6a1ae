"""Adversarial step distillation with knowledge distillation from a few-step teacher (paper §3.4).

The student starts from a trained base/kd checkpoint and is trained only at the timesteps of its
``student_steps``-step Euler schedule ``t_i = 1 - i / N`` (what ``snapgen sample --steps N`` uses):

* **KD from a few-step teacher**: from ``x_{t_i}`` (noised real latents) the frozen teacher takes
  ``teacher_substeps`` Euler steps to ``t_{i+1}``; the student's velocity is regressed onto the
  secant ``(x_{t_i} - x^T_{t_{i+1}}) / (t_i - t_{i+1})`` — one student step reproduces several
  teacher steps (the teacher run this way is the few-step teacher).
* **Adversarial, diffusion-GAN style**: the student's clean estimate ``x0 = x_t - t v`` (fake) and
  real latents are both re-noised at a random ``s`` (the same ``s`` and noise for the pair) and
  passed through a *frozen diffusion backbone* (the teacher); a small trainable head on its
  ``disc_feature``-th feature map, projected onto the pooled text embedding, scores them. Hinge
  loss for the head, ``-D(fake)`` for the student; gradients reach the student through the frozen
  backbone.

One call of :class:`StepDistillation` does both updates in the usual GAN order: the head's step on
(real, detached fake) first, then the student's loss through the updated head, which the engine
back-propagates and steps. Nothing depends on the order of outside calls.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from snapgen.errors import UserError
from snapgen.flow import interpolate
from snapgen.train.engine import adamw


def load_init(net, init: str) -> None:
    """Start from the weights of a base/kd run (its saved EMA model) or a model directory."""
    from snapgen.unet import SnapGenUNet

    p = Path(init)
    d = p / "model" if (p / "model" / "config.json").is_file() else p
    if not (d / "config.json").is_file():
        raise UserError("not a `snapgen train` output_dir or model directory (no model/config.json)", file=str(p),
                        key="step_distill.init")
    try:
        src = SnapGenUNet.from_pretrained(str(d), local_files_only=True, low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise UserError(f"cannot load the student: {str(e).splitlines()[0][:200]}", file=str(d),
                        key="step_distill.init") from None
    if src.spec != net.spec:
        raise UserError("the initial student's architecture differs from this config's arch (after proxy scaling)",
                        file=str(d), key="step_distill.init")
    net.load_state_dict(src.state_dict())


class DiscHead(nn.Module):
    """Conv head on backbone features + a projection onto the condition (pooled text)."""

    def __init__(self, ch: int, cond_dim: int, hidden: int = 64):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(ch, hidden, 3, padding=1), nn.GroupNorm(8, hidden), nn.SiLU(),
                                  nn.Conv2d(hidden, hidden, 3, padding=1), nn.SiLU())
        self.out = nn.Conv2d(hidden, 1, 1)
        self.embed = nn.Linear(cond_dim, hidden)

    def forward(self, feat, pooled):
        h = self.body(feat.float())
        return self.out(h).flatten(1).mean(1) + (self.embed(pooled) * h.mean((2, 3))).sum(1) / h.shape[1] ** 0.5


class StepDistillation:
    """Stage ``step_distill``: owns the discriminator head, its optimiser and the student's schedule
    (``timesteps``, which the batch stream draws ``t`` from)."""

    def __init__(self, teacher, *, pooled_dim: int, probe: tuple, student_steps: int, teacher_substeps: int,
                 kd_weight: float, adv_weight: float, adv_start: int, disc_lr: float, disc_feature: int,
                 device: torch.device, wrap=None):
        self.teacher = teacher
        self.substeps, self.kd_weight, self.adv_weight, self.adv_start = teacher_substeps, kd_weight, adv_weight, adv_start
        self.timesteps = torch.linspace(1.0, 0.0, student_steps + 1)[:-1].to(device)
        self.dt = 1.0 / student_steps
        with torch.no_grad():
            _, feats = teacher(*probe, features=True)
        if not feats:
            raise UserError(f"the discriminator backbone ({teacher.kind}) exposes no feature maps", key="teacher.path")
        n = len(feats)
        self.feature = disc_feature if -n <= disc_feature < n else -1
        self.head = DiscHead(feats[self.feature].shape[1], pooled_dim).to(device)
        self.head_train = wrap(self.head) if wrap is not None else self.head  # DDP for the head's own step
        self.opt = adamw(self.head.parameters(), device, lr=disc_lr, betas=(0.0, 0.99))

    def _score(self, head, x0, s, noise, batch):
        _, feats = self.teacher(interpolate(x0, noise, s), s * 1000, batch["ctx"], batch["pooled"], features=True)
        return head(feats[self.feature], batch["pooled"])

    @torch.no_grad()
    def few_step_target(self, xt, t, batch):
        h = self.dt / self.substeps
        x = xt
        for j in range(self.substeps):
            x = x - h * self.teacher(x, (t - j * h) * 1000, batch["ctx"], batch["pooled"]).float()
        return (xt - x) / self.dt

    def _discriminator_step(self, real, fake, s, noise, batch) -> dict:
        d_real = self._score(self.head_train, real, s, noise, batch)
        d_fake = self._score(self.head_train, fake, s, noise, batch)
        loss = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"d_loss": loss.detach(), "d_real": d_real.detach().mean(), "d_fake": d_fake.detach().mean()}

    def __call__(self, net, batch: dict, step: int):
        t = batch["t"]
        xt = interpolate(batch["x0"], batch["noise"], t)
        v, _ = net(xt, t * 1000, batch["ctx"], batch["pooled"])
        kd = ((v.float() - self.few_step_target(xt, t, batch)) ** 2).flatten(1).mean(1).mean()
        loss, logs = self.kd_weight * kd, {"kd": kd.detach()}
        if self.adv_weight <= 0:
            return loss, logs
        fake = xt - t.view(-1, 1, 1, 1) * v.float()
        # re-noising: a function of the step alone (exact resume needs no generator state)
        g = torch.Generator(device=t.device).manual_seed(int(step) * 7919 + 17)
        s = torch.rand(len(t), generator=g, device=t.device) * 0.75 + 0.05
        noise = torch.randn(fake.shape, generator=g, device=t.device)
        logs.update(self._discriminator_step(batch["x0"], fake.detach(), s, noise, batch))
        if step >= self.adv_start:
            self.head.requires_grad_(False)  # the student's term: gradients reach the fake only
            adv = -self._score(self.head, fake, s, noise, batch).mean()
            self.head.requires_grad_(True)
            loss = loss + self.adv_weight * adv
            logs["g_adv"] = adv.detach()
        return loss, logs

    def state_dict(self) -> dict:
        return {"head": self.head.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, s: dict) -> None:
        self.head.load_state_dict(s["head"])
        self.opt.load_state_dict(s["opt"])
