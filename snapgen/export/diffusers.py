"""A ``snapgen train`` run as a diffusers pipeline directory (:class:`snapgen.pipeline.SnapGenPipeline`).

The pipeline holds what ``snapgen sample`` uses: the run's EMA model (``<run>/model``), the
autoencoder of its latent space as the VAE (or a tiny decoder trained on that latent space by a
``stage=decoder`` run), its text encoder and tokenizer, and the conditioning it was trained with
(prompt length, padded context length, null condition, class prompts, default steps and guidance).
"""
from __future__ import annotations

from pathlib import Path

from snapgen.errors import UserError


def pipeline_from_run(run_dir: str, *, decoder_run: str | None = None):
    """The :class:`~snapgen.pipeline.SnapGenPipeline` of a ``snapgen train`` output directory."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from snapgen.pipeline import SnapGenPipeline
    from snapgen.proxy import prepare_assets
    from snapgen.text import MAX_LENGTH, load_text_encoder
    from snapgen.train.inference import load_run_model, run_proxy_config
    from snapgen.unet import SnapGenUNet

    net, cfg = load_run_model(run_dir)
    if not isinstance(net, SnapGenUNet):
        raise UserError(f"the run trained a {type(net).__name__}; the diffusers pipeline takes a SnapGenUNet run",
                        file=run_dir)
    pc = run_proxy_config(cfg)
    assets = prepare_assets(pc)
    net.register_to_config(sample_size=int(assets.latents.shape[-1]))
    vae = assets.codec.vae if decoder_run is None else _tiny_decoder(decoder_run, assets.codec)
    tokenizer, text_encoder = load_text_encoder(pc.text_encoder)
    return SnapGenPipeline(unet=net, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                           scheduler=FlowMatchEulerDiscreteScheduler(), max_length=MAX_LENGTH,
                           context_length=int(assets.context.shape[1]), null_condition=pc.null_condition,
                           sample_steps=pc.sample_steps, cfg_scale=pc.cfg_scale, prompt_template=pc.prompt_template,
                           class_names=list(assets.class_names))


def _tiny_decoder(path: str, codec):
    """The tiny decoder of a ``snapgen train stage=decoder`` run (it decodes the diffusion latents)."""
    from snapgen.decoder import TinyDecoder

    d = Path(path) / "model"
    if not (d / "config.json").is_file():
        raise UserError("not a finished `snapgen train stage=decoder` run of a tiny decoder (no model/config.json)",
                        file=path, key="--decoder-run")
    dec = TinyDecoder.from_pretrained(str(d), low_cpu_mem_usage=False).eval()
    if dec.spec.latent_channels != codec.latent_channels or dec.spec.upscale != codec.downsample:
        raise UserError(f"the decoder takes {dec.spec.latent_channels}-channel latents x{dec.spec.upscale}, the run's "
                        f"latent space is {codec.latent_channels}-channel x{codec.downsample}", file=path,
                        key="--decoder-run")
    return dec


def export_pipeline(run_dir: str, out: str | Path, *, decoder_run: str | None = None) -> Path:
    """Write the run's pipeline to ``out`` (model_index.json + unet/ vae/ text_encoder/ tokenizer/ scheduler/)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError("the output directory is not empty", file=str(out), key="--out")
    pipe = pipeline_from_run(run_dir, decoder_run=decoder_run)
    pipe.save_pretrained(out, safe_serialization=True)
    return out
