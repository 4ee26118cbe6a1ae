"""How a full-size UNet becomes its proxy: the shipped scaling and a proposed one that keeps every
searched choice distinct.

``current`` is exactly what the proxy does today (:func:`snapgen.proxy.proxy_spec`, i.e.
:meth:`snapgen.spec.ArchSpec.scaled`): channels x ``width_mult`` rounded to the nearest multiple of
lcm(head_dim, norm_groups) (Python's round: halves to even), transformer depth and layers x
``depth_mult`` rounded, at least 1. With the shipped proxy (0.125, 0.25, head_dim 16, norm groups 8)
it maps ``layers`` 1 and 2 to 1, channels 192/256/320 to 32 and depths 1/2 and 2/4 to 1: the proxy
cannot see those choices (``archsearch space check``).

``distinct`` (a proposal; the proxy does not use it) changes two things:

* depths (``layers`` and ``transformer_depth``) keep their first ``DEPTH_FLOOR`` blocks and scale
  only the rest: d -> min(d, F) + round_half_up(max(d - F, 0) x depth_mult). It preserves order, is
  exact for small depths and, with depth_mult 0.5, maps the shipped depths 1, 2, 4, 6 to 1, 2, 3, 4;
* channels round half up (not to even), to the quantum lcm(head_dim, norm_groups) as before; a
  finer quantum comes from a smaller proxy ``head_dim`` (8 with 8 norm groups: quantum 8).

:func:`scaled_distinct` has :meth:`ArchSpec.scaled`'s signature, so it can replace it (or become a
``scaling:`` choice of the proxy) as it is.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable

from snapgen.spec import ArchSpec

DEPTH_FLOOR = 2  # blocks of a stage kept exactly before depth_mult applies
PROXY_CONTEXT_DIM = 384  # the proxy's text encoder width (all-MiniLM-L6-v2); any constant compares the same


def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def floor_depth(d: int, depth_mult: float, floor: int = DEPTH_FLOOR) -> int:
    """Order-preserving depth scaling: the first ``floor`` blocks kept, the rest x ``depth_mult``."""
    if d <= 0:
        return 0
    return min(d, floor) + round_half_up(max(d - floor, 0) * depth_mult)


def scaled_distinct(spec: ArchSpec, width_mult: float = 1.0, depth_mult: float = 1.0, *, head_dim: int | None = None,
                    norm_groups: int | None = None, name: str | None = None, floor: int = DEPTH_FLOOR) -> ArchSpec:
    """The proposed proxy scaling (see the module doc); the signature of :meth:`ArchSpec.scaled`."""
    head_dim = head_dim or spec.head_dim
    norm_groups = norm_groups or spec.norm_groups
    q = math.lcm(head_dim, norm_groups)
    stages = []
    for s in spec.stages:
        ch = max(q, round_half_up(s.channels * width_mult / q) * q)
        stages.append(replace(s, channels=ch, transformer_depth=floor_depth(s.transformer_depth, depth_mult, floor),
                              layers=max(1, floor_depth(s.layers, depth_mult, floor))))
    return replace(spec, stages=tuple(stages), head_dim=head_dim, norm_groups=norm_groups,
                   name=name or spec.name).validate()


def _wire(s: ArchSpec, spec: ArchSpec, latent_channels: int, context_dim: int) -> ArchSpec:
    # As snapgen.proxy.proxy_spec wires a scaled spec to the proxy's latent space and text encoder.
    return replace(s, latent_channels=latent_channels, context_dim=context_dim,
                   pooled_dim=context_dim if spec.pooled_dim else 0).validate()


def current(spec: ArchSpec, cfg, *, latent_channels: int, context_dim: int = PROXY_CONTEXT_DIM) -> ArchSpec:
    from snapgen.proxy import proxy_spec

    return proxy_spec(spec, cfg, latent_channels=latent_channels, context_dim=context_dim)


def distinct(spec: ArchSpec, cfg, *, latent_channels: int, context_dim: int = PROXY_CONTEXT_DIM) -> ArchSpec:
    s = scaled_distinct(spec, cfg.width_mult, cfg.depth_mult, head_dim=cfg.head_dim, norm_groups=cfg.norm_groups,
                        name=f"{spec.name}-proxy")
    return _wire(s, spec, latent_channels, context_dim)


SCALINGS: dict[str, Callable[..., ArchSpec]] = {"current": current, "distinct": distinct}
# The proxy settings that go with `distinct` (proposed): keys of snapgen.proxy.ProxyConfig.
PROPOSED_PROXY = {"head_dim": 8, "depth_mult": 0.5}
