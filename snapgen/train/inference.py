"""Load a trained model for sampling and evaluation (no search framework needed)."""
from __future__ import annotations

import json
from pathlib import Path

from snapgen.errors import UserError


def load_run_model(path: str):
    """(model, TrainConfig) of a `snapgen train` output_dir (its saved EMA model)."""
    from snapgen.train.teacher import _load_dir

    p = Path(path)
    opts = p / "training_options.json"
    if not opts.is_file():
        raise UserError("not a `snapgen train` output_dir (no training_options.json)", file=str(p))
    if not (p / "model" / "config.json").is_file():
        raise UserError("the run has not finished: no model/ (resume it with the same `snapgen train` command)",
                        file=str(p))
    from omegaconf import OmegaConf

    from snapgen.train.config import TrainConfig, validate

    try:
        conf = json.loads(opts.read_text())["config"]
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), conf))
    except Exception as e:
        raise UserError(f"unreadable training_options.json: {str(e).splitlines()[0][:200]}", file=str(opts)) from None
    if cfg.stage == "decoder":
        raise UserError("a decoder run; sample/eval take a diffusion run (base, kd, step_distill)", file=str(p))
    cfg.train.device = "auto"  # where it trained is recorded, not required: sampling picks its own device
    return _load_dir(p / "model", None).eval(), validate(cfg)


def run_proxy_config(cfg, *, steps=None, cfg_scale=None, num_samples=None, sampler=None, device=None):
    """The run's proxy config with the sampling flags of ``snapgen sample`` / ``snapgen eval`` applied."""
    import dataclasses

    from snapgen.train.config import proxy_config

    pc = proxy_config(cfg)
    over = {k: v for k, v in (("sample_steps", steps), ("cfg_scale", cfg_scale), ("num_samples", num_samples),
                              ("sampler", sampler), ("device", device)) if v is not None}
    try:
        return dataclasses.replace(pc, **over).validate()
    except UserError as e:
        raise UserError(e.message, key="--device" if e.key == "device" else e.key) from None
