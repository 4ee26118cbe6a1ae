"""Named architecture presets, read from a search-space YAML file (the single source).

``snapgen`` needs presets to train, sample and export without the search framework, so preset
resolution lives here; ``archsearch.space`` adds the searchable dimensions on top.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from snapgen.errors import UserError
from snapgen.spec import ArchSpec, load_yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_UNET_SPACE = REPO_ROOT / "search_spaces" / "unet.yaml"
DEFAULT_DECODER_SPACE = REPO_ROOT / "search_spaces" / "decoder.yaml"


def load_space_file(path: str | Path) -> dict[str, Any]:
    data = load_yaml(path)
    if not isinstance(data, Mapping):
        raise UserError("a search space must be a mapping with keys kind, presets, search", file=str(path))
    return dict(data)


def resolve_preset_dict(presets: Mapping[str, Any], name: str, *, file: str | None = None) -> dict[str, Any]:
    """The merged ``arch`` mapping of preset ``name`` (following ``extends`` chains)."""
    chain: list[str] = []
    cur: str | None = name
    while cur is not None:
        if cur not in presets:
            where = f"presets.{chain[-1]}.extends" if chain else "--preset"
            raise UserError(f"unknown preset {cur!r}; allowed: {', '.join(presets)}", file=file, key=where)
        if cur in chain:
            raise UserError(f"'extends' cycle: {' -> '.join(chain + [cur])}", file=file, key=f"presets.{cur}")
        chain.append(cur)
        entry = presets[cur]
        if not isinstance(entry, Mapping):
            raise UserError("a preset must be a mapping with keys arch, extends, description", file=file,
                            key=f"presets.{cur}")
        bad = sorted(set(entry) - {"arch", "extends", "description", "autoencoder_kl"})
        if bad:
            raise UserError(f"unknown key {bad[0]!r}; allowed: arch, extends, description, autoencoder_kl", file=file,
                            key=f"presets.{cur}.{bad[0]}")
        cur = entry.get("extends")
    merged: dict[str, Any] = {}
    for n in reversed(chain):
        arch = presets[n].get("arch") or {}
        if not isinstance(arch, Mapping):
            raise UserError("must be a mapping of architecture fields", file=file, key=f"presets.{n}.arch")
        merged.update(arch)
    merged["name"] = name
    return merged


def load_preset(space_file: str | Path | None, name: str) -> ArchSpec:
    """The ArchSpec of preset ``name`` in ``space_file`` (default: the shipped UNet space)."""
    path = Path(space_file) if space_file else DEFAULT_UNET_SPACE
    data = load_space_file(path)
    presets = data.get("presets") or {}
    arch = resolve_preset_dict(presets, name, file=str(path))
    try:
        return ArchSpec.from_dict(arch, file=str(path))
    except UserError as e:
        raise UserError(e.message, file=str(path), key=f"presets.{name}.{e.key}" if e.key else f"presets.{name}") from None


def preset_names(space_file: str | Path | None = None) -> list[str]:
    path = Path(space_file) if space_file else DEFAULT_UNET_SPACE
    return list((load_space_file(path).get("presets") or {}))


def load_decoder_preset(space_file: str | Path | None, name: str):
    """A DecoderSpec (tiny decoder) or AutoencoderKLSpec (sd3, sdxl) from the decoder space."""
    from snapgen.decoder import AutoencoderKLSpec, DecoderSpec

    path = Path(space_file) if space_file else DEFAULT_DECODER_SPACE
    data = load_space_file(path)
    presets = data.get("presets") or {}
    arch = resolve_preset_dict(presets, name, file=str(path))
    entry = presets[name]
    if "autoencoder_kl" in entry:
        cfg = entry["autoencoder_kl"]
        if not isinstance(cfg, Mapping):
            raise UserError("must be a mapping of AutoencoderKL config keys", file=str(path),
                            key=f"presets.{name}.autoencoder_kl")
        return AutoencoderKLSpec(config=dict(cfg), name=name)
    try:
        return DecoderSpec.from_dict(arch, file=str(path))
    except UserError as e:
        raise UserError(e.message, file=str(path), key=f"presets.{name}.{e.key}" if e.key else f"presets.{name}") from None
