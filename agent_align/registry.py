"""Name -> implementation maps for swappable parts (stages, negatives, losses, scorers, backends).

An unknown name fails listing the valid ones, so a typo in ``loss=dpoo`` or ``stage=sfft`` tells
the user what exists.
"""

from __future__ import annotations

import importlib
from typing import Generic, Iterator, TypeVar

from agent_align.errors import config_error

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, key: str):
        self.kind = kind  # "stage", "negative type", ...
        self.key = key  # the config key that selects from it, for error messages
        self._items: dict[str, T | str] = {}

    def register(self, name: str, item: T | str | None = None):
        """Register ``item`` (an object, or a lazy "module:attr" string) under ``name``.
        Without ``item`` it returns a decorator."""
        if item is not None:
            self._items[name] = item
            return item

        def deco(obj):
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        if name not in self._items:
            valid = ", ".join(sorted(self._items))
            raise config_error(self.key, name, f"unknown {self.kind}; valid: {valid}")
        item = self._items[name]
        if isinstance(item, str):  # lazy import keeps `stage=score` free of torch start-up cost
            module, attr = item.split(":")
            item = getattr(importlib.import_module(module), attr)
            self._items[name] = item
        return item  # type: ignore[return-value]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

