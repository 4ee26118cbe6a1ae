"""``fid``: the proxy quality of a UNet candidate, through :func:`snapgen.proxy.run_proxy`.

The study's ``proxy:`` mapping holds :class:`snapgen.proxy.ProxyConfig` fields (nested ``ae`` /
``classifier`` mappings included); it is checked against that dataclass, so a misspelt key is an
error naming the allowed ones.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable, Mapping

from snapgen.errors import UserError


def _dataclass_from_dict(cls, data: Mapping[str, Any], *, file: str | None, prefix: str):
    if not isinstance(data, Mapping):
        raise UserError(f"must be a mapping of {cls.__name__} fields", file=file, key=prefix.rstrip(".") or None)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kw = {}
    for k, v in data.items():
        if k not in fields:
            raise UserError(f"unknown key {k!r}; allowed: {', '.join(fields)}", file=file, key=f"{prefix}{k}")
        t = hints[k]
        if dataclasses.is_dataclass(t):
            v = _dataclass_from_dict(t, v or {}, file=file, prefix=f"{prefix}{k}.")
        elif typing.get_origin(t) is tuple and isinstance(v, (list, tuple)):
            v = tuple(v)
        elif t is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        elif t in (int, float, bool, str) and not isinstance(v, t):
            raise UserError(f"must be {t.__name__}, got {v!r}", file=file, key=f"{prefix}{k}")
        kw[k] = v
    try:
        return cls(**kw)
    except TypeError as e:
        raise UserError(str(e), file=file, key=prefix.rstrip(".") or None) from None


def proxy_config(data: Mapping[str, Any], *, file: str | None = None, **defaults):
    """A validated :class:`ProxyConfig` from the study's ``proxy`` mapping (``defaults`` fill in
    keys the study does not set)."""
    from snapgen.proxy import ProxyConfig

    merged = {**defaults, **dict(data or {})}
    cfg = _dataclass_from_dict(ProxyConfig, merged, file=file, prefix="proxy.")
    try:
        return cfg.validate()
    except UserError as e:
        raise UserError(e.message, file=file, key=f"proxy.{e.key}" if e.key else "proxy") from None


def validate_proxy_keys(data: Mapping[str, Any], *, file: str) -> None:
    if data:
        proxy_config(data, file=file)


def proxy_quality(spec, cfg, *, seed: int, on_eval: Callable[[int, float], bool] | None = None):
    """Run the proxy; returns the :class:`snapgen.proxy.ProxyResult`."""
    from snapgen.proxy import run_proxy

    return run_proxy(spec, cfg, seed=seed, on_eval=on_eval)
