"""Stage ``decoder`` (paper §3.2): train a decoder against the *frozen* proxy encoder, with MSE +
perceptual (LPIPS, only where the ``lpips`` package and its weights load: offline here they do not,
and the run says so in ``training_options.json`` rather than substituting anything) + adversarial
(hinge, a small patch discriminator) losses, no KL term. ``decoder.baseline=true`` trains the proxy
autoencoder's own decoder architecture (a diffusers ``AutoencoderKL`` decoder) from scratch the
same way, for the comparison. Reports held-out PSNR and fvcore GFLOPs at the proxy latent size.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from snapgen.errors import TrainingError, UserError
from snapgen.train import checkpoint as ckpt
from snapgen.train.config import TrainConfig, proxy_config, to_dict
from snapgen.train.runtime import Dist, RunLog, write_json


class PatchDisc(nn.Module):
    def __init__(self, cin: int, ch: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(cin, ch, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(ch, ch * 2, 4, 2, 1),
                                 nn.GroupNorm(8, ch * 2), nn.LeakyReLU(0.2), nn.Conv2d(ch * 2, 1, 3, 1, 1))

    def forward(self, x):
        return self.net(x)


def build(cfg: TrainConfig, codec) -> nn.Module:
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


def train_decoder(cfg: TrainConfig, dist: Dist) -> dict:
    from snapgen.autoencoder import psnr
    from snapgen.proxy import _load_data, prepare_assets
    from snapgen.train.loop import check_output_dir

    if dist.world > 1:
        raise UserError("stage decoder runs in one process (its data fits one CPU); run it without torchrun",
                        key="stage")
    out = Path(cfg.output_dir)
    check_output_dir(cfg)
    pc = proxy_config(cfg)
    state = ckpt.latest(out, stage="decoder")
    assets = prepare_assets(pc)
    codec = assets.codec
    train_images, test_images = _load_data(pc)
    if len(train_images) != len(assets.latents):
        raise UserError("the cached latents do not match the training images", key="proxy")
    torch.manual_seed(cfg.train.seed)
    dec = build(cfg, codec)
    disc = PatchDisc(codec.in_channels)
    lp, lp_note = perceptual() if cfg.decoder.lpips_weight > 0 else (None, "lpips_weight is 0")
    opt = torch.optim.AdamW(dec.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    dopt = torch.optim.AdamW(disc.parameters(), lr=cfg.decoder.disc_lr, betas=(0.5, 0.9))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.train.warmup_steps)))
    g = torch.Generator().manual_seed(cfg.train.seed)
    step = 0
    if state is not None:
        dec.load_state_dict(state["model"]); disc.load_state_dict(state["disc"])
        opt.load_state_dict(state["opt"]); dopt.load_state_dict(state["dopt"]); sched.load_state_dict(state["sched"])
        ckpt.set_rng_state(g, state["rng"])
        step = state["step"]
    z_probe = assets.latents[:1]
    gf = gflops(build(cfg, codec), z_probe)
    params = sum(p.numel() for p in dec.parameters())
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "training_options.json", {
        "config": to_dict(cfg), "proxy_config": dataclasses.asdict(pc), "world_size": 1, "params": params,
        "gflops_at_proxy_latent": gf, "latent_shape": list(assets.latents.shape[1:]), "perceptual": lp_note,
        "losses": ["mse"] + (["lpips"] if lp is not None else []) + (["adversarial"] if cfg.decoder.adv_weight else []),
        "resumed_from_step": step})
    log = RunLog(out, enabled=True, total=cfg.train.steps, start=step, desc="train decoder",
                 progress=cfg.train.progress)
    kill_after = int(os.environ.get("SNAPGEN_TRAIN_KILL_AFTER", "0") or 0)
    dec.train()
    t0 = time.perf_counter()
    while step < cfg.train.steps:
        idx = torch.randint(len(assets.latents), (cfg.train.batch_size,), generator=g)
        z, x = assets.latents[idx], codec.prepare(train_images.images[idx])
        rec = dec(z)
        mse = F.mse_loss(rec, x)
        loss, logs = cfg.decoder.mse_weight * mse, {"mse": float(mse.detach())}
        if lp is not None:
            pl = lp(rec.expand(-1, 3, -1, -1), x.expand(-1, 3, -1, -1)).mean()
            loss = loss + cfg.decoder.lpips_weight * pl
            logs["lpips"] = float(pl.detach())
        adv_on = cfg.decoder.adv_weight > 0 and step >= cfg.decoder.adv_start
        if adv_on:
            disc.requires_grad_(False)
            ga = -disc(rec).mean()
            disc.requires_grad_(True)
            loss = loss + cfg.decoder.adv_weight * ga
            logs["g_adv"] = float(ga.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(dec.parameters(), cfg.train.grad_clip)
        opt.step()
        sched.step()
        if adv_on:
            dl = F.relu(1 - disc(x)).mean() + F.relu(1 + disc(rec.detach())).mean()
            dopt.zero_grad(set_to_none=True)
            dl.backward()
            dopt.step()
            logs["d_loss"] = float(dl.detach())
        step += 1
        log.step()
        if step % cfg.train.log_every == 0 or step == cfg.train.steps:
            lv = float(loss.detach())
            if lv != lv or abs(lv) == float("inf"):
                raise TrainingError(f"non-finite loss at step {step}; lower train.lr (now {cfg.train.lr})")
            log.write({"step": step, "loss": lv, **logs})
            log.step(0, loss=lv)
        if (cfg.train.ckpt_every and step % cfg.train.ckpt_every == 0) or step == cfg.train.steps:
            ckpt.save(out, step, {"stage": "decoder", "model": dec.state_dict(), "disc": disc.state_dict(),
                                  "opt": opt.state_dict(), "dopt": dopt.state_dict(), "sched": sched.state_dict(),
                                  "rng": ckpt.rng_state(g)}, keep=cfg.train.keep_checkpoints)
        if kill_after and step == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    train_s = time.perf_counter() - t0
    log.close()
    dec.eval()
    n = min(1000, len(test_images))
    with torch.no_grad():
        real = codec.prepare(test_images.images[:n])
        z = codec.encode(test_images.images[:n])
        rec = torch.cat([dec(z[i:i + 250]).clamp(-1, 1) for i in range(0, n, 250)])
    from snapgen.decoder import TinyDecoder

    if isinstance(dec, TinyDecoder):
        dec.save_pretrained(out / "model", safe_serialization=True)
    else:
        from safetensors.torch import save_file

        (out / "model").mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in dec.state_dict().items()}, str(out / "model" / "decoder.safetensors"))
    result = {"stage": "decoder", "steps": step, "train_seconds": train_s, "psnr_db": psnr(rec, real),
              "eval_images": n, "params": params, "gflops": gf, "baseline": cfg.decoder.baseline,
              "frozen_autoencoder_psnr_db": assets.info.get("autoencoder_psnr_db"), "perceptual": lp_note}
    write_json(out / "result.json", result)
    return result
