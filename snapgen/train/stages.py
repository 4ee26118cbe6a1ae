"""``snapgen train``: every stage is one run of the training engine (:mod:`snapgen.train.engine`).

A stage only chooses its parts by name (NVlabs/edm): the backbone, the objective
(:data:`OBJECTIVES`: base -> flow matching, kd -> knowledge distillation, step_distill -> step
distillation; decoder -> decoder reconstruction) and the hooks (stats.jsonl / TensorBoard log,
checkpoints, progress). The diffusion stages train on the proxy's data, latents and text
embeddings with the proxy's recipe (:func:`snapgen.proxy.flow_engine`), so ``stage=base`` at the
proxy's size, budget and seed is the proxy run; they sample and score with the proxy's sampler
and metric. Re-running the same command resumes exactly from the last checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from snapgen.errors import UserError
from snapgen.train import checkpoint as ckpt
from snapgen.train.config import TrainConfig, proxy_config, to_dict, validate
from snapgen.train.device import autocast_dtype, describe
from snapgen.train.engine import Engine, Every, Hook, Progress, Recipe
from snapgen.train.models import Student, sampleable, weights_checksum
from snapgen.train.runtime import Dist, RunLog, setup, write_json

# keys that may change between a run and its resume (budget, logging, evaluation, where it runs)
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


# ---- the entry point ----------------------------------------------------------------------------
def train(cfg: TrainConfig, *, nested: bool = False, hooks: list[Hook] | tuple = ()) -> dict:
    """Run (or resume) the configured stage; returns the result summary (also result.json).
    ``hooks``: extra engine hooks, called after the run's own (log, checkpoint, progress)."""
    validate(cfg)
    dist = setup(cfg.train.device, nested=nested)
    prev_threads = torch.get_num_threads()
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    try:
        run = _decoder if cfg.stage == "decoder" else _diffusion
        return run(cfg, dist, list(hooks))
    finally:
        torch.set_num_threads(prev_threads)
        if not nested:
            dist.close()


def _run_hooks(cfg: TrainConfig, dist: Dist, out: Path, start: int, extra: list) -> list:
    """stats.jsonl/TensorBoard every log_every steps, a checkpoint every ckpt_every steps and at the end,
    the progress bar; then the caller's hooks."""
    log = RunLog(out, enabled=dist.main, start=start)

    def write_log(e: Engine):
        log.write({"step": e.step, "loss": e.loss_value, **{k: float(v) for k, v in e.logs.items()},
                   "lr": e.sched.get_last_lr()[0]})

    def save(e: Engine):
        if dist.main:
            ckpt.save(out, e.step, {"stage": cfg.stage, **e.state_dict()}, keep=cfg.train.keep_checkpoints)
        dist.barrier()

    class _CloseLog(Hook):
        def close(self):
            log.close()

    return [Every(cfg.train.log_every, write_log), Every(cfg.train.ckpt_every, save),
            Progress(cfg.train.steps, f"train {cfg.stage}", enabled=dist.main and cfg.train.progress, initial=start),
            _CloseLog(), *extra]


def _options(cfg: TrainConfig, pc, dist: Dist, **extra) -> dict:
    t = cfg.train
    dtype = autocast_dtype(t.precision, dist.device)
    return {"config": to_dict(cfg), "proxy_config": dataclasses.asdict(pc), "world_size": dist.world,
            "device": describe(dist.device), "precision": {None: "fp32", torch.bfloat16: "bf16",
                                                           torch.float16: "fp16"}[dtype],
            "compile": t.compile, **extra}


# ---- diffusion stages (base, kd, step_distill) ---------------------------------------------------
def build_backbone(cfg: TrainConfig, assets, pc):
    from snapgen.proxy import proxy_spec
    from snapgen.spec import ArchSpec
    from snapgen.train.teacher import build_sd3, sd3_config
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


def resolve_teacher(cfg: TrainConfig):
    """The configured teacher, or the embedded default (trained once on the proxy and cached)."""
    from snapgen.train.teacher import load_teacher

    if cfg.teacher.path:
        return load_teacher(cfg.teacher.path, cfg.teacher.subfolder)
    return load_teacher(str(embedded_teacher(cfg)))


# proxy keys that shape the student or its evaluation, not the teacher's data
_STUDENT_ONLY = ("width_mult", "depth_mult", "head_dim", "norm_groups", "num_samples", "sample_steps", "cfg_scale",
                 "sampler", "eval_every", "eval_at")


def teacher_config(cfg: TrainConfig) -> TrainConfig:
    from snapgen.train.config import EvalSection, TrainSection

    t = cfg.teacher
    proxy = {k: v for k, v in dict(cfg.proxy).items() if k not in _STUDENT_ONLY}
    return TrainConfig(stage="base", backbone="sd3-transformer", sd3=dict(t.sd3), proxy=proxy,
                       output_dir="", train=TrainSection(steps=t.steps, batch_size=t.batch_size, lr=t.lr,
                                                         ckpt_every=250, progress=cfg.train.progress,
                                                         threads=cfg.train.threads, device=cfg.train.device,
                                                         precision=cfg.train.precision),
                       eval=EvalSection(num_samples=500))


def embedded_teacher(cfg: TrainConfig) -> Path:
    """Output dir of the embedded SD3-style teacher for this proxy, trained by this trainer (stage
    base) once and cached by its whole configuration; a killed build resumes from its checkpoint."""
    from snapgen.cache import cache_dir, combine, get_or_build, hash_config

    tcfg = teacher_config(cfg)
    d = to_dict(tcfg)
    d.pop("output_dir")
    for k in ("progress", "threads", "device"):
        d["train"].pop(k)
    root = cache_dir("teachers")
    out = root / combine(hash_config(d), "teacher-v1")
    tcfg.output_dir = str(out)
    get_or_build(out / "result.json", lambda: train(tcfg, nested=True), lock=root / f"{out.name}.lock")
    return out


def _probe(assets, device):
    """One zero latent at t = 0.5 with the first class prompt: (x, t1000, ctx, pooled) on ``device``."""
    c, h, w = assets.latents.shape[1:]
    return (torch.zeros(1, c, h, w, device=device), torch.full((1,), 500.0, device=device),
            assets.context[:1].to(device), assets.pooled[:1].to(device))


def _base(cfg, net, teacher, assets, dist):
    from snapgen.train.objectives import FlowMatching

    return FlowMatching(), Student(net)


def _kd(cfg, net, teacher, assets, dist):
    from snapgen.train.kd import KnowledgeDistillation, Projections, TimestepScaler, feature_channels

    k = cfg.kd
    proj = None
    if k.mode != "none" and k.features:
        sch, tch = feature_channels(net, teacher, list(k.features), list(k.teacher_features),
                                    _probe(assets, dist.device))
        proj = Projections(list(k.features), sch, tch).to(dist.device)
    scaler = TimestepScaler(["task", "out", "feat"], k.bins, k.momentum, k.max_scale).to(dist.device)
    objective = KnowledgeDistillation(teacher, mode=k.mode, out_weight=k.out_weight, feat_weight=k.feat_weight,
                                      teacher_features=list(k.teacher_features), scaler=scaler,
                                      world_reduce=dist.all_reduce if dist.world > 1 else None)
    return objective, Student(net, proj)


def _step_distill(cfg, net, teacher, assets, dist):
    from snapgen.train.step_distill import StepDistillation, load_init

    s = cfg.step_distill
    load_init(net, s.init)
    wrap = None
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        wrap = DDP
    objective = StepDistillation(teacher, pooled_dim=assets.pooled.shape[-1], probe=_probe(assets, dist.device),
                                 student_steps=s.student_steps, teacher_substeps=s.teacher_substeps,
                                 kd_weight=s.kd_weight, adv_weight=s.adv_weight, adv_start=s.adv_start,
                                 disc_lr=s.disc_lr, disc_feature=int(s.disc_feature), device=dist.device, wrap=wrap)
    return objective, Student(net)


# what each diffusion stage trains: (cfg, backbone, teacher, assets, dist) -> (objective, Student)
OBJECTIVES = {"base": _base, "kd": _kd, "step_distill": _step_distill}


def _diffusion(cfg: TrainConfig, dist: Dist, hooks: list) -> dict:
    from snapgen.proxy import evaluate, flow_engine, prepare_assets

    out = Path(cfg.output_dir)
    check_output_dir(cfg)
    if cfg.train.batch_size % (dist.world * cfg.train.grad_accum):
        raise UserError(f"train.batch_size {cfg.train.batch_size} is not divisible by the {dist.world} processes x "
                        f"{cfg.train.grad_accum} accumulation steps", key="train.batch_size")
    pc = proxy_config(cfg)
    state = ckpt.latest(out, stage=cfg.stage)  # a corrupt/foreign checkpoint stops here, nothing written
    need_teacher = cfg.stage == "step_distill" or (cfg.stage == "kd" and cfg.kd.mode != "none")
    dev = dist.device
    teacher = resolve_teacher(cfg).to(dev) if need_teacher else None
    assets = prepare_assets(pc)

    torch.manual_seed(cfg.seed)
    net = build_backbone(cfg, assets, pc).to(dev)
    objective, student = OBJECTIVES[cfg.stage](cfg, net, teacher, assets, dist)
    ddp = None
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp = DDP(student, device_ids=[dev.index] if dev.type == "cuda" else None)
    start = state["step"] if state is not None else 0
    engine = flow_engine(student, assets, pc, seed=cfg.seed, device=dev, objective=objective,
                         hooks=_run_hooks(cfg, dist, out, start, hooks), net=ddp, ema_of=net,
                         timesteps=getattr(objective, "timesteps", None), rank=dist.rank, world=dist.world,
                         reduce=(lambda x: dist.all_reduce(x) / dist.world) if dist.world > 1 else None,
                         lr_key="train.lr")
    if state is not None:  # exact resume
        engine.load_state_dict(state)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "training_options.json", _options(
            cfg, pc, dist, params=sum(p.numel() for p in net.parameters()),
            trainable_params=sum(p.numel() for p in student.parameters()),
            teacher=getattr(teacher, "source", None), teacher_class=getattr(teacher, "kind", None),
            resumed_from_step=start))
    engine.run()

    final = engine.ema.model if engine.ema is not None else net
    result = {"stage": cfg.stage, "steps": engine.step, "train_seconds": engine.train_seconds,
              "world_size": dist.world, "device": describe(dev), "params": sum(p.numel() for p in net.parameters()),
              "weights_checksum": weights_checksum(final)}
    if dist.world > 1:
        sums = [None] * dist.world
        torch.distributed.all_gather_object(sums, weights_checksum(student))
        result["ddp_rank_checksums"] = sums
    if dist.main:
        final.save_pretrained(out / "model", safe_serialization=True)
        if cfg.eval.at_end:
            t1 = time.perf_counter()
            seed = cfg.seed + 1 if cfg.eval.seed is None else cfg.eval.seed
            value, images, labels = evaluate(sampleable(final).eval(), assets, pc, seed=seed, device=dev)
            result.update(metric=pc.metric, value=value, sample_steps=pc.sample_steps, cfg_scale=pc.cfg_scale,
                          num_samples=pc.num_samples, eval_seed=seed, eval_seconds=time.perf_counter() - t1)
            from snapgen.sampling import save_grid

            save_grid(images, labels, assets.class_names, out / "samples.png",
                      title=f"{cfg.stage}: {engine.step} steps, {pc.sample_steps} sampling steps, "
                            f"{pc.metric} {value:.2f}")
        write_json(out / "result.json", result)
    dist.barrier()
    return result


# ---- stage decoder ------------------------------------------------------------------------------
def _decoder(cfg: TrainConfig, dist: Dist, hooks: list) -> dict:
    from snapgen.autoencoder import psnr
    from snapgen.proxy import _load_data, prepare_assets
    from snapgen.train.batches import RandomBatches
    from snapgen.train.reconstruction import DecoderReconstruction, PatchDisc, build, gflops, perceptual

    if dist.world > 1:
        raise UserError("stage decoder runs in one process (its data fits one device); run it without torchrun",
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
    dev, t = dist.device, cfg.train
    gf = gflops(build(cfg, codec), assets.latents[:1])  # a separate copy: fvcore traces in eval mode
    torch.manual_seed(cfg.seed)
    dec = build(cfg, codec).to(dev)
    disc = PatchDisc(codec.in_channels).to(dev)
    d = cfg.decoder
    lp, lp_note = perceptual() if d.lpips_weight > 0 else (None, "lpips_weight is 0")
    objective = DecoderReconstruction(mse_weight=d.mse_weight, lpips=lp.to(dev) if lp is not None else None,
                                      lpips_weight=d.lpips_weight, disc=disc, adv_weight=d.adv_weight,
                                      adv_start=d.adv_start, disc_lr=d.disc_lr)
    codec.to(dev)
    batches = RandomBatches({"z": assets.latents, "images": train_images.images}, t.batch_size // t.grad_accum,
                            seed=cfg.seed, device=dev, transform=lambda b, g: {"z": b["z"], "x": codec.prepare(b["images"])})
    # no EMA: the decoder is evaluated and saved as trained
    recipe = Recipe(steps=t.steps, lr=t.lr, warmup_steps=t.warmup_steps, weight_decay=t.weight_decay,
                    grad_clip=t.grad_clip, accum=t.grad_accum)
    start = state["step"] if state is not None else 0
    engine = Engine(dec, objective, batches, recipe, device=dev, dtype=autocast_dtype(t.precision, dev),
                    compile=t.compile, hooks=_run_hooks(cfg, dist, out, start, hooks), lr_key="train.lr",
                    batch_size=t.batch_size // t.grad_accum)
    if state is not None:
        engine.load_state_dict(state)
    params = sum(p.numel() for p in dec.parameters())
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "training_options.json", _options(
        cfg, pc, dist, params=params, gflops_at_proxy_latent=gf, latent_shape=list(assets.latents.shape[1:]),
        perceptual=lp_note, losses=["mse"] + (["lpips"] if lp is not None else []) +
        (["adversarial"] if d.adv_weight else []), resumed_from_step=start))
    engine.run()

    dec.eval()
    n = min(1000, len(test_images))
    with torch.no_grad():
        real = codec.prepare(test_images.images[:n])
        z = codec.encode(test_images.images[:n])
        rec = torch.cat([dec(z[i:i + 250].to(dev)).clamp(-1, 1).cpu() for i in range(0, n, 250)])
    dec.cpu()
    from snapgen.decoder import TinyDecoder

    if isinstance(dec, TinyDecoder):
        dec.save_pretrained(out / "model", safe_serialization=True)
    else:
        from safetensors.torch import save_file

        (out / "model").mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in dec.state_dict().items()}, str(out / "model" / "decoder.safetensors"))
    result = {"stage": "decoder", "steps": engine.step, "train_seconds": engine.train_seconds, "psnr_db": psnr(rec, real),
              "eval_images": n, "params": params, "gflops": gf, "baseline": d.baseline, "device": describe(dev),
              "frozen_autoencoder_psnr_db": assets.info.get("autoencoder_psnr_db"), "perceptual": lp_note}
    write_json(out / "result.json", result)
    return result
