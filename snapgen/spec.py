"""Architecture specs: the single meeting point between search spaces, builders, cost models,
promotion and training.

An :class:`ArchSpec` describes a UNet completely and round-trips exactly through YAML and JSON
(``to_dict`` / ``from_dict``). Every option of a stage is stored per stage; YAML files may give a
scalar (applies to every stage) or a list (one value per stage) — :func:`expand_stage_fields`
does that expansion, so presets stay short.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

import yaml

import snapgen.blocks  # noqa: F401  (registers every block name)
from snapgen.blocks.registry import FIELD_REGISTRY
from snapgen.errors import UserError


TX = {"block": "transformer"}  # a stage option the SpatialTransformer takes as the keyword of the same name


DEPTH_FLOOR = 2  # blocks of a stage a proxy keeps exactly before its depth multiplier applies


@dataclass(frozen=True)
class StageSpec:
    """One resolution level of the UNet (the down stage and its mirrored up stage).

    Each of the ``layers`` down layers (``layers + 1`` up layers, as in SDXL) is
    ``[residual block] + [transformer with transformer_depth blocks]``. Fields marked ``TX`` go to
    :class:`snapgen.blocks.SpatialTransformer` unchanged (see :func:`snapgen.plan.unet_plan`).
    """

    channels: int
    layers: int = 2
    res_block: bool = True
    transformer_depth: int = 0
    self_attention: bool = field(default=True, metadata=TX)
    cross_attention: bool = field(default=True, metadata=TX)
    conv: str = "regular"
    conv_expansion: float = 2.0
    norm: str = "groupnorm"
    conv_shortcut: bool = True
    ffn_ratio: float = field(default=4.0, metadata=TX)
    ffn_gated: bool = field(default=True, metadata=TX)
    ffn_activation: str = field(default="gelu", metadata=TX)  # a name of snapgen.blocks.ACTIVATION
    attention: str = field(default="mhsa", metadata=TX)
    kv_heads: int = field(default=0, metadata=TX)  # only for gqa; mhsa uses all heads, mqa one
    qk_norm: str = field(default="none", metadata=TX)
    pos_embed: str = field(default="none", metadata=TX)

    @property
    def has_attention(self) -> bool:
        return self.transformer_depth > 0 and (self.self_attention or self.cross_attention)


STAGE_FIELDS = tuple(f.name for f in fields(StageSpec))
TRANSFORMER_FIELDS = tuple(f.name for f in fields(StageSpec) if f.metadata.get("block") == "transformer")


def spec_key(spec) -> str:
    """The identity of an architecture (UNet or decoder spec): a hash of its fields, name excluded.
    Cache keys, duplicate detection and tables all use it."""
    from snapgen.cache import hash_config

    d = spec.to_dict()
    d.pop("name", None)
    return hash_config({"kind": type(spec).__name__, "spec": d})[:16]


def check_choices(obj, names, *, file: str | None, prefix: str = "") -> None:
    """Every registry-backed field of ``obj`` among ``names`` holds a registered name."""
    for name in names:
        if name in FIELD_REGISTRY:
            FIELD_REGISTRY[name].check(getattr(obj, name), file=file, key=prefix + name)


@dataclass(frozen=True)
class ArchSpec:
    """A complete UNet architecture."""

    stages: tuple[StageSpec, ...]
    name: str = "custom"
    latent_channels: int = 4
    context_dim: int = 2048
    pooled_dim: int = 0  # 0: no pooled embedding added to the time embedding
    head_dim: int = 64
    norm_groups: int = 32
    mid_block: bool = True
    sampling_conv: str = "regular"  # conv type of down/up-sampling layers
    io_conv: str = "regular"  # conv type of conv_in / conv_out
    time_embed_mult: int = 4

    # ---- derived -------------------------------------------------------------------------
    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def time_embed_dim(self) -> int:
        return self.time_embed_mult * self.stages[0].channels

    # ---- validation ------------------------------------------------------------------------
    def validate(self, file: str | None = None) -> "ArchSpec":
        """Check that the spec can be built; raise a one-line UserError naming the key."""

        def err(key: str, msg: str) -> UserError:
            return UserError(msg, file=file, key=key)

        if not self.stages:
            raise err("stages", "at least one stage is required")
        for name in ("latent_channels", "head_dim", "norm_groups", "time_embed_mult"):
            if getattr(self, name) <= 0:
                raise err(name, f"must be a positive integer, got {getattr(self, name)}")
        for name in ("context_dim", "pooled_dim"):
            if getattr(self, name) < 0:
                raise err(name, f"must be >= 0, got {getattr(self, name)}")
        check_choices(self, ("sampling_conv", "io_conv"), file=file)
        for i, s in enumerate(self.stages):
            k = f"stages[{i}]"
            check_choices(s, STAGE_FIELDS, file=file, prefix=f"{k}.")
            if s.channels <= 0:
                raise err(f"{k}.channels", f"must be a positive integer, got {s.channels}")
            if s.layers < 1:
                raise err(f"{k}.layers", f"must be >= 1, got {s.layers}")
            if s.transformer_depth < 0:
                raise err(f"{k}.transformer_depth", f"must be >= 0, got {s.transformer_depth}")
            if not s.res_block and s.transformer_depth == 0:
                raise err(f"{k}.res_block", "a stage without residual blocks needs transformer_depth >= 1")
            if s.ffn_ratio <= 0 or s.conv_expansion <= 0:
                raise err(f"{k}.ffn_ratio", "ffn_ratio and conv_expansion must be > 0")
            if s.norm == "groupnorm" and s.channels % self.norm_groups:
                raise err(f"{k}.channels", f"{s.channels} is not divisible by norm_groups={self.norm_groups}")
            if s.has_attention:
                if s.channels % self.head_dim:
                    raise err(
                        f"{k}.channels",
                        f"{s.channels} channels are not divisible by head_dim={self.head_dim} (heads must divide channels)",
                    )
                heads = s.channels // self.head_dim
                if s.attention == "gqa" and (s.kv_heads < 1 or heads % s.kv_heads):
                    raise err(f"{k}.kv_heads", f"gqa needs kv_heads >= 1 dividing heads={heads}, got {s.kv_heads}")
                if s.pos_embed == "rope2d" and self.head_dim % 4:
                    raise err("head_dim", "rope2d needs head_dim divisible by 4")
                if s.cross_attention and self.context_dim == 0:
                    raise err(f"{k}.cross_attention", "cross-attention needs context_dim > 0")
        return self

    # ---- transformations ------------------------------------------------------------------
    def scaled(self, width_mult: float = 1.0, depth_mult: float = 1.0, *, head_dim: int | None = None,
               norm_groups: int | None = None, name: str | None = None) -> "ArchSpec":
        """A proxy-sized copy that keeps every choice distinct: channels x ``width_mult`` rounded half
        up to a multiple of lcm(head_dim, norm_groups); depths (``layers``, ``transformer_depth``) keep
        their first ``DEPTH_FLOOR`` blocks and scale only the rest (d -> min(d, F) + round(max(d - F, 0)
        x depth_mult)), which preserves order (1, 2, 4, 6 -> 1, 2, 3, 4 at 0.5) where rounding d x
        depth_mult made 1 and 2 (or 2 and 4) the same proxy. ``head_dim`` / ``norm_groups`` may be
        overridden so that narrow proxies keep several heads."""
        from math import floor, lcm

        def half_up(x: float) -> int:
            return int(floor(x + 0.5))

        def depth(d: int) -> int:
            return d and min(d, DEPTH_FLOOR) + half_up(max(d - DEPTH_FLOOR, 0) * depth_mult)

        head_dim = head_dim or self.head_dim
        norm_groups = norm_groups or self.norm_groups
        q = lcm(head_dim, norm_groups)
        stages = tuple(replace(s, channels=max(q, half_up(s.channels * width_mult / q) * q),
                               transformer_depth=depth(s.transformer_depth), layers=max(1, depth(s.layers)))
                       for s in self.stages)
        return replace(self, stages=stages, head_dim=head_dim, norm_groups=norm_groups,
                       name=name or self.name).validate()

    key = spec_key

    # ---- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stages"] = [dataclasses.asdict(s) for s in self.stages]
        return d

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, file: str | None = None, validate: bool = True) -> "ArchSpec":
        from snapgen.config import structured

        if not isinstance(data, Mapping):
            raise UserError("an architecture spec must be a mapping", file=file)
        data = dict(data)
        top = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - top - set(STAGE_FIELDS))
        if unknown:
            raise UserError(f"unknown key {unknown[0]!r}; allowed: {', '.join(sorted(top | set(STAGE_FIELDS)))}",
                            file=file, key=unknown[0])
        stages = tuple(structured(StageSpec, st, file=file, prefix=f"stages[{i}].")
                       for i, st in enumerate(expand_stage_fields(data, file=file)))
        spec = structured(cls, {**data, "stages": stages}, file=file)
        return spec.validate(file) if validate else spec

    @classmethod
    def from_json(cls, text: str, **kw) -> "ArchSpec":
        return cls.from_dict(json.loads(text), **kw)

    @classmethod
    def from_yaml(cls, text: str, **kw) -> "ArchSpec":
        return cls.from_dict(yaml.safe_load(text), **kw)

    @classmethod
    def load(cls, path: str | Path) -> "ArchSpec":
        """Load a spec file (YAML or JSON). A file holding ``{arch: {...}}`` (a training config
        or a trial record) is accepted too."""
        data = load_yaml(path)
        if isinstance(data, Mapping) and "arch" in data and "stages" not in data:
            data = data["arch"]
        return cls.from_dict(data, file=str(path))


def expand_stage_fields(data: dict[str, Any], *, file: str | None = None) -> list[dict[str, Any]]:
    """The per-stage mappings of a spec mapping where stage fields may be scalars (all stages) or lists
    (one per stage); ``stages`` may also be given explicitly as a list of mappings. Consumes the stage
    keys from ``data``; the types are checked when the spec is built (:func:`snapgen.config.structured`)."""
    explicit = data.pop("stages", None)
    shared = {k: data.pop(k) for k in list(data) if k in STAGE_FIELDS}
    if explicit is None:
        if "channels" not in shared:
            raise UserError("missing key 'channels' (or 'stages'): the stage widths are required", file=file, key="channels")
        n = len(shared["channels"]) if isinstance(shared["channels"], (list, tuple)) else 1
        explicit = [{} for _ in range(n)]
    if not isinstance(explicit, (list, tuple)) or not explicit:
        raise UserError("must be a non-empty list of stage mappings", file=file, key="stages")
    n = len(explicit)
    stages = []
    for i, st in enumerate(explicit):
        if not isinstance(st, Mapping):
            raise UserError("each stage must be a mapping", file=file, key=f"stages[{i}]")
        kw = {}
        for k, v in shared.items():
            if isinstance(v, (list, tuple)):
                if len(v) != n:
                    raise UserError(f"has {len(v)} values for {n} stages", file=file, key=k)
                v = v[i]
            kw[k] = v
        stages.append({**kw, **st})
    return stages


from snapgen.config import load_yaml  # noqa: E402,F401  (snapgen.spec.load_yaml: the one file reader)
