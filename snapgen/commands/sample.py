"""``snapgen sample RUN_DIR [--classes a,b | --prompt TEXT ...] [--steps N --cfg S --seed K] -o grid.png``:
sample a trained model (class names of the proxy data, or free prompts through the run's text
encoder) into a PNG grid, one row per class/prompt."""
from __future__ import annotations


def add_arguments(p):
    p.add_argument("run_dir", help="output_dir of `snapgen train` (base, kd or step_distill)")
    p.add_argument("--classes", default=None, help="comma-separated class names (default: all classes)")
    p.add_argument("--prompt", action="append", default=None, help="a free prompt (repeatable)")
    p.add_argument("--per-row", type=int, default=8, help="samples per class / prompt")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the run's)")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default: the run's)")
    p.add_argument("--sampler", choices=["euler", "heun"], default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N, mps")
    p.add_argument("-o", "--output", required=True, help="PNG file to write")


def write_grid(images, names, path, *, per_row: int, stage: str, steps: int, cfg_scale: float, seed: int):
    """The PNG of ``snapgen sample``: uint8 images (len(names) * per_row, C, H, W), one row per name."""
    import torch

    from snapgen.sampling import save_grid

    labels = torch.arange(len(names)).repeat_interleave(per_row)
    return save_grid(images, labels, names, path, per_class=per_row,
                     title=f"{stage}: {steps} steps, cfg {cfg_scale}, seed {seed}")


def run(args):
    import torch

    from snapgen.data.base import to_uint8
    from snapgen.errors import UserError
    from snapgen.flow import sample
    from snapgen.proxy import prepare_assets
    from snapgen.text import class_conditioning
    from snapgen.train.device import resolve_device
    from snapgen.train.inference import load_run_model, run_proxy_config
    from snapgen.train.models import sampleable

    net, cfg = load_run_model(args.run_dir)
    pc = run_proxy_config(cfg, steps=args.steps, cfg_scale=args.cfg, sampler=args.sampler, device=args.device)
    if args.steps is not None and args.steps < 1:
        raise UserError("must be >= 1", key="--steps")
    device = resolve_device(pc.device)
    assets = prepare_assets(pc)
    if args.prompt:
        names = list(args.prompt)
        cond = class_conditioning(names, template="{name}", encoder=pc.text_encoder, null=pc.null_condition)
        ctx, pooled = cond.context, cond.pooled
    else:
        names = list(assets.class_names)
        if args.classes:
            want = [c.strip() for c in args.classes.split(",") if c.strip()]
            bad = [c for c in want if c not in names]
            if bad:
                raise UserError(f"unknown class {bad[0]!r}; allowed: {', '.join(names)}", key="--classes")
            idx = [names.index(c) for c in want] + [len(names)]
            names = want
        else:
            idx = list(range(len(names) + 1))
        ctx, pooled = assets.context[idx], assets.pooled[idx]
    if ctx.shape[1] < assets.context.shape[1]:  # pad prompts to a common length (zeros are masked out)
        ctx = torch.nn.functional.pad(ctx, (0, 0, 0, assets.context.shape[1] - ctx.shape[1]))
    k, n = len(names), args.per_row
    labels = torch.arange(k).repeat_interleave(n)
    g = torch.Generator().manual_seed(args.seed)
    c, h, w = assets.latents.shape[1:]
    noise = torch.randn(k * n, c, h, w, generator=g).to(device)
    model = sampleable(net.to(device))
    ctx, pooled, labels = ctx.to(device), pooled.to(device), labels.to(device)
    cond = {"encoder_hidden_states": ctx[labels], "pooled": pooled[labels]}
    unc = {"encoder_hidden_states": ctx[-1:].expand(k * n, -1, -1), "pooled": pooled[-1:].expand(k * n, -1)}
    if not model.spec.pooled_dim:
        cond.pop("pooled"), unc.pop("pooled")
    z = sample(model, noise, cond, unc, steps=pc.sample_steps, cfg_scale=pc.cfg_scale, method=pc.sampler)
    images = to_uint8(assets.codec.to(device).decode(z))
    write_grid(images, names, args.output, per_row=n, stage=cfg.stage, steps=pc.sample_steps, cfg_scale=pc.cfg_scale,
               seed=args.seed)
    print(f"{args.output}: {k} x {n} samples, {pc.sample_steps} {pc.sampler} steps, cfg {pc.cfg_scale}")
    return 0
