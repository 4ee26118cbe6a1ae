"""Batch streams for the engine: random batches drawn on the run's device from one seeded generator.

The generator's state is the data position (saved in checkpoints: exact resume). Every process of
a DDP run draws the *global* batch and takes its slice, so a 2-process run sees the same samples
as a 1-process one. The tensors a stream draws from live on the device (moved once), and the
random indices are drawn there too: no host-device traffic or synchronisation per step.

Determinism: on the CPU a seed gives bit-identical batches run after run (and the same as before
this module: the draw order is unchanged). On CUDA the generator is a CUDA (Philox) generator: runs
with the same seed on the same GPU model and software are identical too, but the stream differs from
the CPU's, so CPU and CUDA runs of one seed are different (equally valid) samples of the training.
"""
from __future__ import annotations

from typing import Callable

import torch

from snapgen.flow import drop_condition, logit_normal


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


class RandomBatches:
    """Batches ``{name: tensor[idx]}`` of uniformly drawn indices (with replacement), optionally
    transformed by ``transform(batch, generator)`` (augmentation, preparation)."""

    def __init__(self, tensors: dict[str, torch.Tensor], batch_size: int, *, seed: int = 0,
                 device: torch.device | str = "cpu", generator: torch.Generator | None = None,
                 transform: Callable[[dict, torch.Generator], dict] | None = None):
        self.device = torch.device(device)
        self.tensors = {k: v.to(self.device) for k, v in tensors.items()}
        self.n = len(next(iter(self.tensors.values())))
        self.batch_size = batch_size
        self.generator = generator if generator is not None else _generator(self.device, seed)
        self.transform = transform

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        idx = torch.randint(self.n, (self.batch_size,), generator=self.generator, device=self.device)
        batch = {k: v[idx] for k, v in self.tensors.items()}
        return self.transform(batch, self.generator) if self.transform else batch

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, s: dict) -> None:
        self.generator.set_state(s["generator"])


class FlowBatches:
    """Rectified-flow training batches over latents with class conditions:
    ``{"x0", "y", "t", "noise", "ctx", "pooled"}``. ``y`` is dropped to the null condition (row
    ``null`` of the context table) with probability ``p_uncond`` (CFG); ``t`` is logit-normal, or
    uniform over ``timesteps`` (a few-step student's schedule)."""

    def __init__(self, latents, labels, context, pooled, *, batch_size: int, null: int, p_uncond: float, seed: int,
                 device: torch.device | str = "cpu", logit_mean: float = 0.0, logit_std: float = 1.0,
                 timesteps: torch.Tensor | None = None, rank: int = 0, world: int = 1):
        self.device = torch.device(device)
        d = self.device
        self.latents, self.labels = latents.to(d), labels.to(d)
        self.context, self.pooled = context.to(d), pooled.to(d)
        self.batch_size, self.null, self.p_uncond = batch_size, null, p_uncond
        self.logit_mean, self.logit_std = logit_mean, logit_std
        self.timesteps = None if timesteps is None else timesteps.to(d)
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} is not divisible by {world} processes")
        per = batch_size // world
        self.slice = slice(rank * per, (rank + 1) * per)
        self.generator = _generator(d, seed)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        g, b, d = self.generator, self.batch_size, self.device
        idx = torch.randint(len(self.latents), (b,), generator=g, device=d)
        y = drop_condition(self.labels[idx], self.p_uncond, self.null, generator=g)
        if self.timesteps is None:
            t = logit_normal(b, mean=self.logit_mean, std=self.logit_std, generator=g, device=d)
        else:
            t = self.timesteps[torch.randint(len(self.timesteps), (b,), generator=g, device=d)]
        noise = torch.randn((b,) + tuple(self.latents.shape[1:]), generator=g, device=d)
        sl = self.slice
        idx, y = idx[sl], y[sl]
        return {"x0": self.latents[idx], "y": y, "t": t[sl], "noise": noise[sl], "ctx": self.context[y],
                "pooled": self.pooled[y]}

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, s: dict) -> None:
        self.generator.set_state(s["generator"])
