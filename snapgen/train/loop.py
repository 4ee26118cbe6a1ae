"""``snapgen train``: one loop for the diffusion stages (base, kd, step_distill), short enough to
read at once (nanoGPT / DiT style); the decoder stage lives in :mod:`snapgen.train.decoder_train`.

Data, autoencoder latents, text embeddings, sampler and metric are the proxy's
(:func:`snapgen.proxy.prepare_assets`, :func:`snapgen.proxy.evaluate`). Every step draws the
*global* batch from one seeded generator on every rank and each DDP rank takes its slice, so the
data position is one generator state (saved in the checkpoint), and a 2-process run sees the same
samples as a 1-process one.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from snapgen.errors import TrainingError, UserError
from snapgen.flow import EMA, drop_condition, interpolate, logit_normal, velocity_target
from snapgen.train import checkpoint as ckpt
from snapgen.train.config import TrainConfig, proxy_config, to_dict, validate
from snapgen.train.kd import Projections, TimestepScaler, combine, feature_loss
from snapgen.train.models import Student, sampleable, weights_checksum
from snapgen.train.runtime import Dist, RunLog, autocast, setup, write_json
from snapgen.train.teacher import build_sd3, sd3_config

# keys that may change between a run and its resume (budget, logging, evaluation)
_VOLATILE = ("train.steps", "train.progress", "train.log_every", "train.ckpt_every", "train.keep_checkpoints",
             "train.threads", "train.device", "eval", "provenance", "output_dir")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = prefix + k
        if isinstance(v, dict) and k not in ("arch", "sd3", "proxy"):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def check_output_dir(cfg: TrainConfig) -> None:
    """An output_dir that holds a run of a different configuration is refused (never overwritten)."""
    f = Path(cfg.output_dir) / "training_options.json"
    if not f.is_file():
        return
    try:
        old = _flat(json.loads(f.read_text())["config"])
    except (ValueError, KeyError):
        raise UserError("unreadable training_options.json; choose another output_dir", file=str(f)) from None
    new = _flat(to_dict(cfg))
    for k in sorted(set(old) | set(new)):
        if any(k == v or k.startswith(v + ".") for v in _VOLATILE):
            continue
        if old.get(k) != new.get(k):
            raise UserError(f"output_dir holds a run with a different configuration ({k}: {old.get(k)!r} there, "
                            f"{new.get(k)!r} here); choose another output_dir", file=cfg.output_dir, key=k)


# ---- models -------------------------------------------------------------------------------------
def build_backbone(cfg: TrainConfig, assets, pc):
    from snapgen.proxy import proxy_spec
    from snapgen.spec import ArchSpec
    from snapgen.unet import SnapGenUNet

    c, h, _ = assets.latents.shape[1:]
    d = assets.context.shape[-1]
    if cfg.backbone == "sd3-transformer":
        return build_sd3(sd3_config(dict(cfg.sd3), latent_channels=c, latent_size=h, context_dim=d))
    try:
        spec = ArchSpec.from_dict(dict(cfg.arch))
    except UserError as e:
        raise UserError(e.message, key=f"arch.{e.key}" if e.key else "arch") from None
    return SnapGenUNet.from_spec(proxy_spec(spec, pc, latent_channels=c, context_dim=d))


def resolve_teacher(cfg: TrainConfig, pc, dist: Dist):
    """The configured teacher, or the embedded default (trained once on the proxy and cached)."""
    from snapgen.train.teacher import load_teacher

    if cfg.teacher.path:
        return load_teacher(cfg.teacher.path, cfg.teacher.subfolder)
    return load_teacher(str(embedded_teacher(cfg)))


def teacher_config(cfg: TrainConfig) -> TrainConfig:
    from snapgen.train.config import EvalSection, TrainSection

    t = cfg.teacher
    proxy = {k: v for k, v in dict(cfg.proxy).items() if k not in _STUDENT_ONLY}
    return TrainConfig(stage="base", backbone="sd3-transformer", sd3=dict(t.sd3), proxy=proxy,
                       output_dir="", train=TrainSection(steps=t.steps, batch_size=t.batch_size, lr=t.lr,
                                                         ckpt_every=250, progress=cfg.train.progress,
                                                         threads=cfg.train.threads, device=cfg.train.device),
                       eval=EvalSection(num_samples=500))


# proxy keys that shape the student or its evaluation, not the teacher's data
_STUDENT_ONLY = ("width_mult", "depth_mult", "head_dim", "norm_groups", "num_samples", "sample_steps", "cfg_scale",
                 "sampler", "eval_every", "eval_at", "progress", "threads", "steps", "batch_size", "lr")


def embedded_teacher(cfg: TrainConfig) -> Path:
    """Output dir of the embedded SD3-style teacher for this proxy, trained by this trainer (stage
    base) once and cached by its whole configuration; a killed build resumes from its checkpoint."""
    from snapgen.cache import cache_dir, combine, get_or_build, hash_config

    tcfg = teacher_config(cfg)
    d = to_dict(tcfg)
    for k in ("output_dir",):
        d.pop(k)
    d["train"].pop("progress"); d["train"].pop("threads"); d["train"].pop("device")
    root = cache_dir("teachers")
    out = root / combine(hash_config(d), "teacher-v1")
    tcfg.output_dir = str(out)
    get_or_build(out / "result.json", lambda: train(tcfg, nested=True), lock=root / f"{out.name}.lock")
    return out


# ---- the batch ----------------------------------------------------------------------------------
def draw_batch(cfg: TrainConfig, assets, g: torch.Generator, dist: Dist, *, timesteps=None):
    """The global batch from generator ``g`` (identical on every rank), this rank's slice on device."""
    b = cfg.train.batch_size
    n, null = len(assets.latents), len(assets.class_names)
    idx = torch.randint(n, (b,), generator=g)
    y = drop_condition(assets.labels[idx], cfg.train.p_uncond, null, generator=g)
    if timesteps is None:
        t = logit_normal(b, generator=g)
    else:  # the few-step student's discrete schedule
        t = timesteps[torch.randint(len(timesteps), (b,), generator=g)]
    noise = torch.randn((b,) + tuple(assets.latents.shape[1:]), generator=g)
    per = b // dist.world
    sl = slice(dist.rank * per, (dist.rank + 1) * per)
    dev = dist.device
    return {"x0": assets.latents[idx][sl].to(dev), "y": y[sl].to(dev), "t": t[sl].to(dev),
            "noise": noise[sl].to(dev), "ctx": assets.context[y][sl].to(dev), "pooled": assets.pooled[y][sl].to(dev)}


# ---- objectives ---------------------------------------------------------------------------------
def base_loss(student, batch, **_):
    xt = interpolate(batch["x0"], batch["noise"], batch["t"])
    v, _f = student(xt, batch["t"] * 1000, batch["ctx"], batch["pooled"])
    per = ((v.float() - velocity_target(batch["x0"], batch["noise"]).float()) ** 2).flatten(1).mean(1)
    return per.mean(), {}


class KD:
    def __init__(self, cfg: TrainConfig, teacher, scaler: TimestepScaler, dist: Dist):
        self.cfg, self.teacher, self.scaler, self.dist = cfg.kd, teacher, scaler, dist

    def __call__(self, student, batch, **_):
        t = batch["t"]
        xt = interpolate(batch["x0"], batch["noise"], t)
        v, sfeats = student(xt, t * 1000, batch["ctx"], batch["pooled"])
        losses = {"task": ((v.float() - velocity_target(batch["x0"], batch["noise"]).float()) ** 2).flatten(1).mean(1)}
        if self.cfg.mode != "none":
            with torch.no_grad():
                vt, tfeats = self.teacher(xt, t * 1000, batch["ctx"], batch["pooled"], features=True)
            losses["out"] = ((v.float() - vt.float()) ** 2).flatten(1).mean(1)
            if sfeats:
                losses["feat"] = feature_loss(sfeats, [tfeats[i] for i in self.cfg.teacher_features])
            self.scaler.update(t, {k: losses.get(k, torch.zeros_like(t)) for k in self.scaler.terms},
                               self.dist.all_reduce if self.dist.world > 1 else None)
        loss = combine(self.cfg.mode, t, losses, self.cfg.out_weight, self.cfg.feat_weight, self.scaler)
        return loss, {k: float(v.detach().mean()) for k, v in losses.items()}


def _teacher_channels(teacher, cfg: TrainConfig, assets, dist: Dist) -> list[int]:
    c, h, w = assets.latents.shape[1:]
    with torch.no_grad():
        _, feats = teacher(torch.zeros(1, c, h, w, device=dist.device), torch.full((1,), 500.0, device=dist.device),
                           assets.context[:1].to(dist.device), assets.pooled[:1].to(dist.device), features=True)
    if not feats:
        raise UserError(f"teacher {teacher.kind} exposes no feature maps; set kd.features=[] (output-level KD only)",
                        key="kd.features")
    try:
        return [feats[i].shape[1] for i in cfg.kd.teacher_features]
    except IndexError:
        raise UserError(f"the teacher has {len(feats)} feature maps; indices must be in [-{len(feats)}, "
                        f"{len(feats) - 1}]", key="kd.teacher_features") from None


# ---- the run ------------------------------------------------------------------------------------
def train(cfg: TrainConfig, *, nested: bool = False) -> dict:
    """Run (or resume) the configured stage; returns the result summary (also result.json)."""
    validate(cfg)
    dist = setup(cfg.train.device, nested=nested)
    prev_threads = torch.get_num_threads()
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    try:
        if cfg.stage == "decoder":
            from snapgen.train.decoder_train import train_decoder

            return train_decoder(cfg, dist)
        return _train(cfg, dist)
    finally:
        torch.set_num_threads(prev_threads)
        if not nested:
            dist.close()


def _train(cfg: TrainConfig, dist: Dist) -> dict:
    from snapgen.proxy import evaluate, prepare_assets

    out = Path(cfg.output_dir)
    check_output_dir(cfg)
    if cfg.train.batch_size % dist.world:
        raise UserError(f"train.batch_size {cfg.train.batch_size} is not divisible by the {dist.world} processes",
                        key="train.batch_size")
    pc = proxy_config(cfg)
    state = ckpt.latest(out, stage=cfg.stage)  # a corrupt/foreign checkpoint stops here, nothing written
    need_teacher = cfg.stage == "step_distill" or (cfg.stage == "kd" and cfg.kd.mode != "none")
    teacher = resolve_teacher(cfg, pc, dist).to(dist.device) if need_teacher else None
    assets = prepare_assets(pc)

    torch.manual_seed(cfg.train.seed)
    net = build_backbone(cfg, assets, pc)
    proj, scaler = None, TimestepScaler(["task", "out", "feat"], cfg.kd.bins, cfg.kd.momentum, cfg.kd.max_scale)
    if cfg.stage == "kd" and cfg.kd.mode != "none" and cfg.kd.features:
        _, sf = net(torch.zeros((1,) + tuple(assets.latents.shape[1:])), torch.full((1,), 500.0),
                    assets.context[:1], pooled=assets.pooled[:1] if net.spec.pooled_dim else None, return_features=True,
                    return_dict=False)
        for f in cfg.kd.features:
            if f not in sf:
                raise UserError(f"the student has no feature {f!r}; allowed: {', '.join(sf)}", key="kd.features")
        proj = Projections(cfg.kd.features, [sf[f].shape[1] for f in cfg.kd.features],
                           _teacher_channels(teacher, cfg, assets, dist))
    sd = None
    if cfg.stage == "step_distill":
        from snapgen.train.step_distill import StepDistill, load_init

        load_init(net, cfg.step_distill.init)
        sd = StepDistill(cfg, teacher, dist, assets)
    student = Student(net, proj).to(dist.device)
    scaler.to(dist.device)
    ema = EMA(net, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.train.warmup_steps)))
    g = torch.Generator().manual_seed(cfg.train.seed)
    step = 0
    if state is not None:  # exact resume
        student.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        if sd is not None:
            sd.load_state_dict(state["step_distill"])
        ckpt.set_rng_state(g, state["rng"])
        step = state["step"]
    ddp = student
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp = DDP(student, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    if sd is not None:
        loss_fn = sd
    elif cfg.stage == "kd":
        loss_fn = KD(cfg, teacher, scaler, dist)
    else:
        loss_fn = base_loss
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "training_options.json", {
            "config": to_dict(cfg), "proxy_config": dataclasses.asdict(pc), "world_size": dist.world,
            "device": str(dist.device), "params": sum(p.numel() for p in net.parameters()),
            "trainable_params": sum(p.numel() for p in student.parameters()),
            "teacher": getattr(teacher, "source", None), "teacher_class": getattr(teacher, "kind", None),
            "resumed_from_step": step, "kill_hook": os.environ.get("SNAPGEN_TRAIN_KILL_AFTER")})
    log = RunLog(out, enabled=dist.main, total=cfg.train.steps, start=step, desc=f"train {cfg.stage}",
                 progress=cfg.train.progress)
    kill_after = int(os.environ.get("SNAPGEN_TRAIN_KILL_AFTER", "0") or 0)  # test hook: SIGKILL after this step
    timesteps = sd.timesteps if sd is not None else None
    student.train()

    def save_ckpt():
        if dist.main:
            ckpt.save(out, step, {"stage": cfg.stage, "model": student.state_dict(), "opt": opt.state_dict(),
                                  "sched": sched.state_dict(), "scaler": scaler.state_dict(),
                                  "ema": ema.state_dict() if ema else {}, "rng": ckpt.rng_state(g),
                                  "step_distill": sd.state_dict() if sd else {}}, keep=cfg.train.keep_checkpoints)
        dist.barrier()

    t0 = time.perf_counter()
    while step < cfg.train.steps:
        batch = draw_batch(cfg, assets, g, dist, timesteps=timesteps)
        with autocast(dist.device):
            loss, logs = loss_fn(ddp, batch, step=step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.train.grad_clip)
        opt.step()
        sched.step()
        if ema is not None:
            ema.update(net)
        if sd is not None:
            logs.update(sd.discriminator_step(batch, step))
        step += 1
        log.step()
        if step % cfg.train.log_every == 0 or step == cfg.train.steps:
            lv = float(dist.all_reduce(loss.detach().clone()) / dist.world)
            if not math.isfinite(lv):
                raise TrainingError(f"non-finite loss ({lv}) at step {step}; lower train.lr (now {cfg.train.lr})")
            log.write({"step": step, "loss": lv, **logs, "lr": sched.get_last_lr()[0]})
            log.step(0, loss=lv)
        if (cfg.train.ckpt_every and step % cfg.train.ckpt_every == 0) or step == cfg.train.steps:
            save_ckpt()
        if kill_after and step == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    train_s = time.perf_counter() - t0
    log.close()

    final = ema.model if ema is not None else net
    result = {"stage": cfg.stage, "steps": step, "train_seconds": train_s, "world_size": dist.world,
              "params": sum(p.numel() for p in net.parameters()), "weights_checksum": weights_checksum(final)}
    if dist.world > 1:
        sums = [None] * dist.world
        torch.distributed.all_gather_object(sums, weights_checksum(student))
        result["ddp_rank_checksums"] = sums
    if dist.main:
        final.save_pretrained(out / "model", safe_serialization=True)
        if cfg.eval.at_end:
            t1 = time.perf_counter()
            value, images, labels = evaluate(sampleable(final).eval(), assets, pc, seed=cfg.eval.seed)
            result.update(metric=pc.metric, value=value, sample_steps=pc.sample_steps, cfg_scale=pc.cfg_scale,
                          num_samples=pc.num_samples, eval_seconds=time.perf_counter() - t1)
            from snapgen.sampling import save_grid

            save_grid(images, labels, assets.class_names, out / "samples.png",
                      title=f"{cfg.stage}: {step} steps, {pc.sample_steps} sampling steps, {pc.metric} {value:.2f}")
        write_json(out / "result.json", result)
    dist.barrier()
    return result
