"""``fd-fmnist`` / ``fid``: the proxy quality of a UNet candidate, through :func:`snapgen.proxy.run_proxy`.

The study's ``proxy:`` mapping holds :class:`snapgen.proxy.ProxyConfig` fields (nested ``ae`` /
``classifier`` mappings included); it is checked against that dataclass, so a misspelt key is an
error naming the allowed ones.
"""
from __future__ import annotations

from typing import Any, Mapping

from snapgen.config import structured
from snapgen.errors import UserError


def proxy_config(data: Mapping[str, Any], *, file: str | None = None, **defaults):
    """A validated :class:`ProxyConfig` from the study's ``proxy`` mapping (``defaults`` fill in
    keys the study does not set)."""
    from snapgen.proxy import ProxyConfig

    merged = {**defaults, **dict(data or {})}
    cfg = structured(ProxyConfig, merged, file=file, prefix="proxy.")
    try:
        return cfg.validate()
    except UserError as e:
        raise UserError(e.message, file=file, key=f"proxy.{e.key}" if e.key else "proxy") from None


def validate_proxy_keys(data: Mapping[str, Any], *, file: str) -> None:
    if data:
        proxy_config(data, file=file)
