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
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from snapgen.errors import UserError
from snapgen.flow import interpolate


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


class StepDistill:
    def __init__(self, cfg, teacher, dist, assets):
        self.c = cfg.step_distill
        self.teacher, self.dist = teacher, dist
        n = self.c.student_steps
        self.timesteps = torch.linspace(1.0, 0.0, n + 1)[:-1]
        self.dt = 1.0 / n
        c, h, w = assets.latents.shape[1:]
        with torch.no_grad():
            _, feats = teacher(torch.zeros(1, c, h, w, device=dist.device), torch.full((1,), 500.0, device=dist.device),
                               assets.context[:1].to(dist.device), assets.pooled[:1].to(dist.device), features=True)
        if not feats:
            raise UserError(f"the discriminator backbone ({teacher.kind}) exposes no feature maps", key="teacher.path")
        ch = feats[self.c_feat(len(feats))].shape[1]
        self.head = DiscHead(ch, assets.pooled.shape[-1]).to(dist.device)
        self.head_ddp = self.head
        if dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.head_ddp = DDP(self.head)
        self.opt = torch.optim.AdamW(self.head.parameters(), lr=self.c.disc_lr, betas=(0.0, 0.99))
        self._fake = None
        self._s = None

    def c_feat(self, n: int) -> int:
        try:
            i = int(self.c.disc_feature)
        except ValueError:
            i = -1
        return i if -n <= i < n else -1

    def disc(self, x0, s, noise, batch):
        xs = interpolate(x0, noise, s)
        _, feats = self.teacher(xs, s * 1000, batch["ctx"], batch["pooled"], features=True)
        return self.head_ddp(feats[self.c_feat(len(feats))], batch["pooled"])

    @torch.no_grad()
    def few_step_target(self, xt, t, batch):
        k = self.c.teacher_substeps
        x, h = xt, self.dt / k
        for j in range(k):
            tj = t - j * h
            x = x - h * self.teacher(x, tj * 1000, batch["ctx"], batch["pooled"]).float()
        return (xt - x) / self.dt

    def __call__(self, student, batch, step: int):
        t = batch["t"]
        xt = interpolate(batch["x0"], batch["noise"], t)
        v, _ = student(xt, t * 1000, batch["ctx"], batch["pooled"])
        target = self.few_step_target(xt, t, batch)
        kd = ((v.float() - target) ** 2).flatten(1).mean(1).mean()
        loss, logs = self.c.kd_weight * kd, {"kd": float(kd.detach())}
        fake = xt - t.view(-1, 1, 1, 1) * v.float()
        g = torch.Generator(device="cpu").manual_seed(int(step) * 7919 + 17)  # re-noising: part of the step's seed
        s = (torch.rand(len(t), generator=g) * 0.75 + 0.05).to(t.device)
        noise = torch.randn(fake.shape, generator=g).to(t.device)
        self._pair = (fake.detach(), s, noise)
        if self.c.adv_weight > 0 and step >= self.c.adv_start:
            self.head.requires_grad_(False)
            adv = -self.disc(fake, s, noise, batch).mean()
            self.head.requires_grad_(True)
            loss = loss + self.c.adv_weight * adv
            logs["g_adv"] = float(adv.detach())
        return loss, logs

    def discriminator_step(self, batch, step: int) -> dict:
        if self.c.adv_weight <= 0:
            return {}
        fake, s, noise = self._pair
        d_real = self.disc(batch["x0"], s, noise, batch)
        d_fake = self.disc(fake, s, noise, batch)
        loss = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"d_loss": float(loss.detach()), "d_real": float(d_real.detach().mean()),
                "d_fake": float(d_fake.detach().mean())}

    def state_dict(self) -> dict:
        return {"head": self.head.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, s: dict) -> None:
        self.head.load_state_dict(s["head"])
        self.opt.load_state_dict(s["opt"])
