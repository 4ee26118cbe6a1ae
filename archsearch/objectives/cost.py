"""``params`` and ``gflops`` of the full-size architecture at the target resolution.

fvcore tracing of a full-size model takes seconds, so results are cached on disk (under the
snapgen cache) keyed by the spec's ``key()`` (name excluded), the target size and the cost model's source.
"""
from __future__ import annotations

import functools
import hashlib
import json
import warnings
from pathlib import Path

from snapgen.cache import atomic_write_json, cache_dir, hash_config


@functools.lru_cache(maxsize=1)
def _cost_code_version() -> str:
    import archsearch.cost as c

    return hashlib.sha256(Path(c.__file__).read_bytes()).hexdigest()[:12]


def cost_metrics(spec, latent_size: int, context_len: int) -> dict:
    """{params, gflops, gflops_attention} of ``spec`` at ``latent_size`` (cached per spec key)."""
    key = hash_config({"spec": spec.key(), "latent": latent_size, "ctx": context_len,
                       "code": _cost_code_version()})[:20]
    path = cache_dir("cost") / f"{key}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            pass  # a damaged entry is recomputed
    from archsearch.cost import cost_of

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = cost_of(spec, latent_size, context_len)
    out = {"params": float(rep.params), "gflops": float(rep.gflops), "gflops_attention": float(rep.gflops_attention)}
    atomic_write_json(path, out)
    return out
