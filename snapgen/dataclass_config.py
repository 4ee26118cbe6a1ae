"""Nested frozen dataclasses from plain mappings (study files, train configs), with one-line
errors naming the dotted key. OmegaConf structured configs cannot hold these dataclasses
directly (tuples, nested defaults), so this small converter is shared by archsearch and snapgen."""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Mapping

from snapgen.errors import UserError


def dataclass_from_dict(cls, data: Mapping[str, Any], *, file: str | None, prefix: str):
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
            v = dataclass_from_dict(t, v or {}, file=file, prefix=f"{prefix}{k}.")
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
