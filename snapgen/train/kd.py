"""Multi-level knowledge distillation (paper §3.3): output level (the teacher's velocity) and feature
level (chosen student stages matched, through learned 1x1 projections, to teacher feature maps),
combined with the flow-matching task loss.

Combinations (``kd.mode``):

* ``linear``: ``L = L_task + a * L_out + b * L_feat`` with fixed ``a = out_weight``, ``b = feat_weight``.
* ``timestep_aware`` (our reading of the paper's timestep-aware scaling; §3.3 is not in the
  reference text shipped here): the difficulty of each target at a timestep is measured by the
  running magnitude of its loss in that timestep bin — for the KD terms that is the mean squared
  student–teacher difference. Each KD term is rescaled per sample by
  ``w_k(t) = clamp(m_task(bin(t)) / m_k(bin(t)), max_scale)``, where ``m`` are EMAs (``momentum``)
  of the per-bin mean loss over ``bins`` equal bins of t in [0, 1], detached from the graph. So at
  every timestep each KD term contributes as much as the task loss does there (times its
  ``out_weight`` / ``feat_weight``): where the student–teacher gap is small relative to the
  flow-matching target's difficulty, KD is weighted up; where the gap is large, it is not blown up
  further. A fixed linear weight instead lets whichever term is largest at a timestep dominate it.
* ``none``: the task loss alone (equivalent to stage ``base``, with the same data stream).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Projections(nn.Module):
    """One 1x1 conv per distilled student stage, student channels -> teacher channels (zero bias)."""

    def __init__(self, names: list[str], student_ch: list[int], teacher_ch: list[int]):
        super().__init__()
        self.names = list(names)
        self.proj = nn.ModuleList(nn.Conv2d(s, t, 1) for s, t in zip(student_ch, teacher_ch))

    def forward(self, feats: dict) -> list[torch.Tensor]:
        return [p(feats[n]) for n, p in zip(self.names, self.proj)]


def feature_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Per-sample mean squared difference summed over the matched stages; the student map is resized
    (area / bilinear) to the teacher's grid, the teacher map is layer-normalised over channels so that
    teachers with large activations do not dominate."""
    total = 0.0
    for s, t in zip(student, teacher):
        if s.shape[-2:] != t.shape[-2:]:
            s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
        t = F.layer_norm(t.float().transpose(1, -1), t.shape[1:2]).transpose(1, -1)
        total = total + ((s.float() - t) ** 2).flatten(1).mean(1)
    return total


class TimestepScaler(nn.Module):
    """Running per-timestep-bin magnitudes of the loss terms (buffers: saved, restored, broadcast)."""

    def __init__(self, terms: list[str], bins: int = 10, momentum: float = 0.95, max_scale: float = 20.0):
        super().__init__()
        self.terms = list(terms)
        self.bins, self.momentum, self.max_scale = bins, momentum, max_scale
        self.register_buffer("mag", torch.zeros(len(terms), bins))
        self.register_buffer("seen", torch.zeros(len(terms), bins))

    def bin_of(self, t: torch.Tensor) -> torch.Tensor:
        return (t * self.bins).long().clamp(0, self.bins - 1)

    @torch.no_grad()
    def update(self, t: torch.Tensor, losses: dict, world_reduce=None) -> None:
        b = self.bin_of(t)
        sums = torch.zeros(len(self.terms), self.bins, device=t.device)
        cnt = torch.zeros(self.bins, device=t.device).index_add_(0, b, torch.ones_like(t))
        for i, k in enumerate(self.terms):
            sums[i].index_add_(0, b, losses[k].detach().float())
        if world_reduce is not None:  # DDP: every rank sees the global batch's statistics
            cnt, sums = world_reduce(cnt), world_reduce(sums)
        has = cnt > 0
        mean = sums / cnt.clamp_min(1)
        m = self.momentum
        first = (self.seen == 0) & has
        upd = torch.where(first, mean, m * self.mag + (1 - m) * mean)
        self.mag.copy_(torch.where(has.expand_as(upd), upd, self.mag))
        self.seen.add_(has.float())

    def weights(self, t: torch.Tensor, term: str, ref: str = "task") -> torch.Tensor:
        b = self.bin_of(t)
        i, r = self.terms.index(term), self.terms.index(ref)
        w = self.mag[r, b] / self.mag[i, b].clamp_min(1e-8)
        return torch.where(self.seen[i, b] > 0, w, torch.ones_like(w)).clamp(max=self.max_scale)


def combine(mode: str, t: torch.Tensor, losses: dict, out_weight: float, feat_weight: float,
            scaler: TimestepScaler | None) -> torch.Tensor:
    """Per-sample losses {"task", "out", "feat"} -> the scalar training loss."""
    total = losses["task"]
    if mode == "none":
        return total.mean()
    for k, w in (("out", out_weight), ("feat", feat_weight)):
        if k not in losses or w == 0:
            continue
        scale = scaler.weights(t, k) if mode == "timestep_aware" else 1.0
        total = total + w * scale * losses[k]
    return total.mean()


class KnowledgeDistillation:
    """Stage ``kd``: the flow-matching task loss plus output-level (the teacher's velocity) and
    feature-level (projected student stages vs teacher feature maps) terms, combined by ``mode``
    (``timestep_aware`` with the running per-bin magnitudes it owns, ``linear`` or ``none``)."""

    def __init__(self, teacher, *, mode: str, out_weight: float, feat_weight: float, teacher_features: list[int],
                 scaler: TimestepScaler, world_reduce=None):
        self.teacher, self.mode, self.out_weight, self.feat_weight = teacher, mode, out_weight, feat_weight
        self.teacher_features, self.scaler, self.world_reduce = list(teacher_features), scaler, world_reduce

    def __call__(self, net, batch: dict, step: int):
        from snapgen.flow import flow_error, interpolate

        t = batch["t"]
        xt = interpolate(batch["x0"], batch["noise"], t)
        v, sfeats = net(xt, t * 1000, batch["ctx"], batch["pooled"])
        losses = {"task": flow_error(v, batch["x0"], batch["noise"])}
        if self.mode != "none":
            with torch.no_grad():
                vt, tfeats = self.teacher(xt, t * 1000, batch["ctx"], batch["pooled"], features=True)
            losses["out"] = ((v.float() - vt.float()) ** 2).flatten(1).mean(1)
            if sfeats:
                losses["feat"] = feature_loss(sfeats, [tfeats[i] for i in self.teacher_features])
            self.scaler.update(t, {k: losses.get(k, torch.zeros_like(t)) for k in self.scaler.terms},
                               self.world_reduce)
        loss = combine(self.mode, t, losses, self.out_weight, self.feat_weight, self.scaler)
        return loss, {k: v.detach().mean() for k, v in losses.items()}

    def state_dict(self) -> dict:
        return self.scaler.state_dict()

    def load_state_dict(self, s: dict) -> None:
        self.scaler.load_state_dict(s)


def feature_channels(net, teacher, features: list[str], teacher_features: list[int], probe: tuple):
    """(student channels, teacher channels) of the distilled stages, from one probe forward
    ``probe = (x, t1000, ctx, pooled)`` on the run's device; unknown names are one-line errors."""
    from snapgen.errors import UserError

    x, t, ctx, pooled = probe
    with torch.no_grad():
        _, sf = net(x, t, ctx, pooled=pooled if net.spec.pooled_dim else None, return_features=True,
                    return_dict=False)
        _, tf = teacher(x, t, ctx, pooled, features=True)
    for f in features:
        if f not in sf:
            raise UserError(f"the student has no feature {f!r}; allowed: {', '.join(sf)}", key="kd.features")
    if not tf:
        raise UserError(f"teacher {teacher.kind} exposes no feature maps; set kd.features=[] (output-level KD only)",
                        key="kd.features")
    try:
        tch = [tf[i].shape[1] for i in teacher_features]
    except IndexError:
        raise UserError(f"the teacher has {len(tf)} feature maps; indices must be in [-{len(tf)}, {len(tf) - 1}]",
                        key="kd.teacher_features") from None
    return [sf[f].shape[1] for f in features], tch
