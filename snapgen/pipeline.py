"""A trained SnapGen model as a diffusers pipeline: prompts -> images.

:class:`SnapGenPipeline` is a ``DiffusionPipeline`` of five standard components — ``unet``
(:class:`~snapgen.unet.SnapGenUNet`), ``vae`` (the decoder: a diffusers ``AutoencoderKL`` or the
:class:`~snapgen.decoder.TinyDecoder`), ``text_encoder`` and ``tokenizer`` (transformers; the
embedded default is all-MiniLM-L6-v2) and ``scheduler`` (diffusers'
``FlowMatchEulerDiscreteScheduler``) — and ``save_pretrained`` writes a standard pipeline directory
(``model_index.json`` and one folder per component)::

    pipe = SnapGenPipeline.from_pretrained("out/")            # or DiffusionPipeline.from_pretrained(
    images = pipe(["a photo of a Sneaker"], num_inference_steps=8, guidance_scale=2.0,
                  generator=torch.Generator().manual_seed(0)).images    # "out/", trust_remote_code=True)

It samples exactly as ``snapgen sample`` does (tested to the bit at test size): each prompt is
encoded on its own, its token states zero-padded to the length the model was trained with
(``context_length``) and mean-pooled; classifier-free guidance batches the conditional and the null
condition (the empty prompt's embedding, or zeros) as ``[cond, uncond]``; the scheduler's sigmas are
``linspace(1, 1/N, N)`` (SD3 / Flux's), on which diffusers' Euler step equals
:func:`snapgen.flow.sample`'s; latents are un-normalised with the VAE's ``scaling_factor`` /
``shift_factor`` (SD3's convention) and decoded. ``output_type="pil"`` rounds as the project does
everywhere (:func:`snapgen.data.base.to_uint8`, the images its metric scores); ``"np"`` and ``"pt"``
are diffusers' [0, 1] images; ``"latent"`` the denoised latents.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

import snapgen.decoder  # noqa: F401  (diffusers loads components only from modules already imported)
import snapgen.unet  # noqa: F401
from snapgen.hub import is_reexport, reexport_path, write_reexport
from snapgen.text import DEFAULT_TEMPLATE, MAX_LENGTH, embed_prompt, pad_embeddings

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
NULL_CONDITIONS = ("empty", "zeros")


def flow_sigmas(num_inference_steps: int) -> np.ndarray:
    """The sigmas of :func:`snapgen.flow.sample` without the final 0 (the scheduler appends it)."""
    return np.linspace(1.0, 1.0 / num_inference_steps, num_inference_steps)


class SnapGenPipeline(DiffusionPipeline):
    """Text (or class prompt) to image with a SnapGen UNet; see the module doc."""

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler: FlowMatchEulerDiscreteScheduler,
                 max_length: int = MAX_LENGTH, context_length: int = 0, null_condition: str = "empty",
                 sample_steps: int = 8, cfg_scale: float = 2.0, prompt_template: str = DEFAULT_TEMPLATE,
                 class_names: list[str] | None = None):
        """``max_length``: tokens kept per prompt; ``context_length``: the padded context length the
        UNet was trained with; ``null_condition``: what guidance contrasts with (``empty``: the empty
        prompt, ``zeros``); ``sample_steps`` / ``cfg_scale``: the defaults of ``__call__``;
        ``prompt_template`` / ``class_names``: the class prompts it was trained on, if any."""
        super().__init__()
        if null_condition not in NULL_CONDITIONS:
            raise ValueError(f"unknown null_condition {null_condition!r}; allowed: {', '.join(NULL_CONDITIONS)}")
        self.register_modules(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)
        self.register_to_config(max_length=max_length, context_length=context_length, null_condition=null_condition,
                                sample_steps=sample_steps, cfg_scale=cfg_scale, prompt_template=prompt_template,
                                class_names=list(class_names or []))
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    def class_prompts(self, names=None) -> list[str]:
        """The prompts of the classes it was trained on (all of them, or ``names``)."""
        known = list(self.config.class_names)
        names = known if names is None else list(names)
        bad = [n for n in names if n not in known]
        if bad:
            raise ValueError(f"unknown class {bad[0]!r}; allowed: {', '.join(known)}")
        return [self.config.prompt_template.format(name=n) for n in names]

    # ---- conditioning ----------------------------------------------------------------------------
    def encode_prompt(self, prompt: str | list[str], negative_prompt: str | list[str] | None = None,
                      num_images_per_prompt: int = 1):
        """(context, pooled) of the prompts and of the null condition, each (B, L, D) / (B, D) with
        B = len(prompt) * num_images_per_prompt, one context length for both."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("at least one prompt is required")
        if negative_prompt is None:
            negatives = [""]
        else:
            negatives = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt)
            if len(negatives) != len(prompts):
                raise ValueError(f"{len(negatives)} negative prompts for {len(prompts)} prompts")
        n = self.config.max_length
        states = [embed_prompt(self.tokenizer, self.text_encoder, p, n) for p in prompts]
        null = [embed_prompt(self.tokenizer, self.text_encoder, p, n) for p in negatives]
        length = max([self.config.context_length] + [h.shape[0] for h in states + null])
        ctx, _, pooled = pad_embeddings(states, length)
        nctx, _, npooled = pad_embeddings(null, length)
        if negative_prompt is None and self.config.null_condition == "zeros":
            nctx, npooled = torch.zeros_like(nctx), torch.zeros_like(npooled)
        k = num_images_per_prompt
        ctx, pooled = ctx.repeat_interleave(k, 0), pooled.repeat_interleave(k, 0)
        b = ctx.shape[0]
        if nctx.shape[0] == 1:
            nctx, npooled = nctx.expand(b, -1, -1), npooled.expand(b, -1)
        else:
            nctx, npooled = nctx.repeat_interleave(k, 0), npooled.repeat_interleave(k, 0)
        return (ctx, pooled), (nctx, npooled)

    # ---- sampling --------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompt: str | list[str], negative_prompt: str | list[str] | None = None, *,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 num_images_per_prompt: int = 1, height: int | None = None, width: int | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None, latents: torch.Tensor | None = None,
                 output_type: str = "pil", return_dict: bool = True):
        """Generate ``num_images_per_prompt`` images per prompt (in prompt order). Defaults: the
        model's ``sample_steps`` and ``cfg_scale``, its training size; ``guidance_scale=1`` turns
        guidance off."""
        steps = self.config.sample_steps if num_inference_steps is None else int(num_inference_steps)
        scale = self.config.cfg_scale if guidance_scale is None else float(guidance_scale)
        if steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {steps}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"unknown output_type {output_type!r}; allowed: {', '.join(OUTPUT_TYPES)}")
        unet, dev = self.unet, self._execution_device
        (ctx, pooled), (nctx, npooled) = self.encode_prompt(prompt, negative_prompt, num_images_per_prompt)
        size = unet.config.sample_size
        if (height is None or width is None) and size is None:
            raise ValueError("the UNet's config has no sample_size: give height and width")
        h = (height or size * self.vae_scale_factor) // self.vae_scale_factor
        w = (width or size * self.vae_scale_factor) // self.vae_scale_factor
        b = ctx.shape[0]
        dtype = unet.dtype
        if latents is None:
            latents = randn_tensor((b, unet.config.in_channels, h, w), generator=generator, device=dev,
                                   dtype=torch.float32)
        x = latents.to(dev, torch.float32)
        guided = scale != 1.0
        if guided:
            cond = {"encoder_hidden_states": torch.cat([ctx, nctx]).to(dev, dtype),
                    "pooled": torch.cat([pooled, npooled]).to(dev, dtype)}
        else:
            cond = {"encoder_hidden_states": ctx.to(dev, dtype), "pooled": pooled.to(dev, dtype)}
        if not unet.spec.pooled_dim:
            cond["pooled"] = None
        self.scheduler.set_timesteps(sigmas=flow_sigmas(steps), device=dev)
        for t in self.progress_bar(self.scheduler.timesteps):
            ts = t.expand(b)
            if guided:
                v_c, v_u = unet(torch.cat([x, x]).to(dtype), torch.cat([ts, ts]), **cond,
                                return_dict=False)[0].float().chunk(2)
                v = v_u + scale * (v_c - v_u)
            else:
                v = unet(x.to(dtype), ts, **cond, return_dict=False)[0].float()
            x = self.scheduler.step(v, t, x, return_dict=False)[0]
        if output_type == "latent":
            images = x
        else:
            vae = self.vae
            z = x / vae.config.scaling_factor + (getattr(vae.config, "shift_factor", None) or 0.0)
            decoded = vae.decode(z.to(vae.dtype), return_dict=False)[0].float().clamp(-1, 1)
            images = self._postprocess(decoded, output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def _postprocess(self, decoded: torch.Tensor, output_type: str):
        if output_type != "pil":
            return self.image_processor.postprocess(decoded, output_type=output_type)
        from PIL import Image

        from snapgen.data.base import to_uint8

        arr = to_uint8(decoded.cpu()).permute(0, 2, 3, 1).numpy()
        return [Image.fromarray(a[..., 0], "L") if a.shape[-1] == 1 else Image.fromarray(a) for a in arr]

    # ---- saving and loading ----------------------------------------------------------------------
    def save_pretrained(self, save_directory, *args, **kwargs):
        """diffusers' pipeline directory, plus what ``DiffusionPipeline.from_pretrained(dir,
        trust_remote_code=True)`` needs to find this class outside diffusers: ``_class_name`` as
        ``[module file, class]`` in model_index.json and that one-line module (:mod:`snapgen.hub`)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        index = Path(save_directory) / "model_index.json"
        data = json.loads(index.read_text())
        data["_class_name"] = [reexport_path(save_directory, type(self)).stem, type(self).__name__]
        index.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        write_reexport(save_directory, type(self))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' loader; the directory's module file is run only when it is exactly the import
        line :meth:`save_pretrained` writes (it re-imports this class), else ``trust_remote_code``
        stays the caller's choice."""
        if is_reexport(pretrained_model_name_or_path, cls):
            kwargs.setdefault("trust_remote_code", True)
        kwargs.setdefault("low_cpu_mem_usage", False)  # no accelerate needed
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
