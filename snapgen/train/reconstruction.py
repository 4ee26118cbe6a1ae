"""Decoder reconstruction (paper §3.2): a decoder trained against the *frozen* encoder, with MSE +
perceptual (LPIPS, only where the ``lpips`` package and its weights load: offline here they do not,
and the run says so in ``training_options.json`` rather than substituting anything) + adversarial
(hinge, a small patch discriminator) losses, no KL term. Used by stage ``decoder`` of ``snapgen
train`` (``decoder.baseline=true`` trains the proxy autoencoder's own decoder architecture from
scratch the same way, for the comparison) and, MSE only, by the decoder proxy of a study.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from snapgen.errors import UserError


class PatchDisc(nn.Module):
    def __init__(self, cin: int, ch: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(cin, ch, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(ch, ch * 2, 4, 2, 1),
                                 nn.GroupNorm(8, ch * 2), nn.LeakyReLU(0.2), nn.Conv2d(ch * 2, 1, 3, 1, 1))

    def forward(self, x):
        return self.net(x)


def build(cfg, codec) -> nn.Module:
    """The decoder of a ``snapgen train`` stage ``decoder`` config for ``codec``'s latent space."""
    from snapgen.decoder import AutoencoderKLSpec, DecoderSpec, TinyDecoder, build_decoder, decode_path

    if cfg.decoder.baseline:
        conf = {k: v for k, v in dict(codec.vae.config).items() if not k.startswith("_")}
        return decode_path(build_decoder(AutoencoderKLSpec(config=conf, name="proxy-autoencoder")))
    arch = dict(cfg.decoder.arch)
    arch.update(latent_channels=codec.latent_channels, out_channels=codec.in_channels)
    try:
        spec = DecoderSpec.from_dict(arch)
    except UserError as e:
        raise UserError(e.message, key=f"decoder.arch.{e.key}" if e.key else "decoder.arch") from None
    if spec.upscale != codec.downsample:
        raise UserError(f"the decoder upsamples x{spec.upscale}, the encoder downsamples x{codec.downsample}: "
                        f"give {len(codec.vae.config.block_out_channels)} stages", key="decoder.arch.channels")
    return TinyDecoder.from_spec(spec)


def gflops(model: nn.Module, z: torch.Tensor) -> float:
    """fvcore count (one multiply-add = one FLOP) of one decode, in G."""
    from fvcore.nn import FlopCountAnalysis

    fa = FlopCountAnalysis(model.eval(), (z,))
    fa.unsupported_ops_warnings(False)
    fa.uncalled_modules_warnings(False)
    return fa.total() / 1e9


def perceptual():
    """LPIPS if its package and weights are present (None otherwise: no substitute)."""
    try:
        import lpips  # noqa: F401

        return lpips.LPIPS(net="alex", verbose=False).eval().requires_grad_(False), "lpips (alex)"
    except Exception as e:  # not installed, or weights not downloadable offline
        return None, f"absent ({type(e).__name__}): the perceptual term is off"


class DecoderReconstruction:
    """``net(batch["z"])`` against ``batch["x"]``: ``mse_weight`` MSE + ``lpips_weight`` LPIPS (where
    ``lpips`` is a module) + from ``adv_start`` on ``adv_weight`` hinge-adversarial; the patch
    discriminator (``disc``) and its optimiser are owned here and stepped inside the call, first on
    (real, detached reconstruction), then the decoder's term reads the updated discriminator."""

    def __init__(self, *, mse_weight: float = 1.0, lpips=None, lpips_weight: float = 0.0, disc: nn.Module | None = None,
                 adv_weight: float = 0.0, adv_start: int = 0, disc_lr: float = 2e-4):
        self.mse_weight, self.lpips, self.lpips_weight = mse_weight, lpips, lpips_weight
        self.adv_weight, self.adv_start = adv_weight, adv_start
        self.disc = disc if adv_weight > 0 else None
        self.opt = None
        if self.disc is not None:
            from snapgen.train.engine import adamw

            self.opt = adamw(disc.parameters(), next(disc.parameters()).device, lr=disc_lr, betas=(0.5, 0.9))

    def __call__(self, net, batch: dict, step: int):
        x = batch["x"]
        rec = net(batch["z"])
        mse = F.mse_loss(rec, x)
        loss, logs = self.mse_weight * mse, {"mse": mse.detach()}
        if self.lpips is not None:
            pl = self.lpips(rec.expand(-1, 3, -1, -1), x.expand(-1, 3, -1, -1)).mean()
            loss = loss + self.lpips_weight * pl
            logs["lpips"] = pl.detach()
        if self.disc is not None and step >= self.adv_start:
            d = F.relu(1 - self.disc(x)).mean() + F.relu(1 + self.disc(rec.detach())).mean()
            self.opt.zero_grad(set_to_none=True)
            d.backward()
            self.opt.step()
            self.disc.requires_grad_(False)  # the decoder's term: gradients reach the reconstruction only
            ga = -self.disc(rec).mean()
            self.disc.requires_grad_(True)
            loss = loss + self.adv_weight * ga
            logs.update(d_loss=d.detach(), g_adv=ga.detach())
        return loss, logs

    def state_dict(self) -> dict:
        return {"disc": self.disc.state_dict(), "opt": self.opt.state_dict()} if self.disc else {}

    def load_state_dict(self, s: dict) -> None:
        if self.disc:
            self.disc.load_state_dict(s["disc"])
            self.opt.load_state_dict(s["opt"])
