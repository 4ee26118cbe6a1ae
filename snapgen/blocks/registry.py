"""Name -> constructor registries, keyed by the names used in YAML search spaces
(the diffusers ``get_down_block`` idea, as a dict instead of an if-chain)."""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

from snapgen.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str):
        def deco(fn):
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = fn
            return fn

        return deco

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._items[name]
        except KeyError:
            raise UserError(f"unknown {self.kind} {name!r}; allowed: {', '.join(self._items)}", key=self.kind) from None

    def build(self, name: str, *args, **kwargs) -> T:
        return self.get(name)(*args, **kwargs)


CONV = Registry("conv")
NORM = Registry("norm")
ATTENTION = Registry("attention")
POS_EMBED = Registry("pos_embed")
QK_NORM = Registry("qk_norm")
