"""Name -> constructor registries, keyed by the names used in YAML search spaces
(the diffusers ``get_down_block`` idea, as a dict instead of an if-chain)."""
from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

from snapgen.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **meta):
        """Register a constructor under ``name``; ``meta``: facts about it that other code reads
        (a conv's ``expansion=True``: it takes the stage's ``conv_expansion``)."""
        def deco(fn):
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name], self._meta[name] = fn, meta
            return fn

        return deco

    def meta(self, name: str) -> dict[str, Any]:
        self.get(name)
        return self._meta[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._items[name]
        except KeyError:
            raise UserError(f"unknown {self.kind} {name!r}; allowed: {', '.join(self._items)}", key=self.kind) from None

    def check(self, name: Any, *, file: str | None = None, key: str | None = None) -> None:
        """One-line UserError naming ``key`` and the allowed names unless ``name`` is registered."""
        if name not in self._items:
            raise UserError(f"unknown {self.kind} {name!r}; allowed: {', '.join(self._items)}", file=file,
                            key=key or self.kind)

    def build(self, name: str, *args, **kwargs) -> T:
        return self.get(name)(*args, **kwargs)


CONV = Registry("conv")
NORM = Registry("norm")
ATTENTION = Registry("attention")
POS_EMBED = Registry("pos_embed")
QK_NORM = Registry("qk_norm")
ACTIVATION = Registry("ffn_activation")

# The spec fields (UNet stages and top level, tiny decoder) whose allowed values are a registry's
# names: spec validation, the search-space loader and their error messages read them from here.
FIELD_REGISTRY = {"conv": CONV, "sampling_conv": CONV, "io_conv": CONV, "norm": NORM, "norm_out": NORM,
                  "attention": ATTENTION, "qk_norm": QK_NORM, "pos_embed": POS_EMBED, "ffn_activation": ACTIVATION}
