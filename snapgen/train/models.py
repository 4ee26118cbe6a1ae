"""What a run trains: a :class:`Student` (the backbone plus, for feature-level KD, the learned
projections) and adapters that let the proxy's sampler and metric drive any backbone."""
from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn as nn

from snapgen.train.teacher import call


class Student(nn.Module):
    """``forward -> (velocity, projected features)``; the one module DDP wraps."""

    def __init__(self, net: nn.Module, proj: nn.Module | None = None):
        super().__init__()
        self.net = net
        self.proj = proj

    def forward(self, x, t1000, ctx, pooled):
        if self.proj is None:
            return call(self.net, x, t1000, ctx, pooled), []
        v, feats = self.net(x, t1000, ctx, pooled=pooled if self.net.spec.pooled_dim else None, return_features=True,
                            return_dict=False)
        return v, self.proj(feats)


class Sampleable(nn.Module):
    """Any backbone behind the SnapGen UNet's calling convention (``model(x, t, encoder_hidden_states,
    pooled)`` and ``model.spec.pooled_dim``), for :func:`snapgen.proxy.generate`."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.spec = SimpleNamespace(pooled_dim=1)

    def forward(self, x, t, encoder_hidden_states=None, pooled=None):
        return call(self.net, x, t, encoder_hidden_states, pooled)


def sampleable(net: nn.Module) -> nn.Module:
    from snapgen.unet import SnapGenUNet

    return net if isinstance(net, SnapGenUNet) else Sampleable(net)


@torch.no_grad()
def weights_checksum(module: nn.Module) -> str:
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()[:16]
