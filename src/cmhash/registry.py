"""The one shape of every registry of components: dataset sources, encoders and hashing methods.

A :class:`Registry` maps the names a user may write (``dataset.name: coco``, ``encode.backend:
open_clip``, ``train.methods: [djsrh]``) to import paths, ``package.module`` or
``package.module:attribute``, and imports a component only when it is asked for: checking one
method's settings imports that method alone, and a stage imports nothing it does not run. Adding a
component is one module plus one line in its registry.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

from cmhash.errors import CmhashError


class Registry(Mapping[str, str]):
    """``name -> "package.module[:attribute]"``, in the order given; :meth:`load` imports one."""

    def __init__(self, kind: str, entries: dict[str, str]):
        self.kind = kind  # what an entry is, in messages: "dataset source", "encoder", "hashing method"
        self._entries = dict(entries)

    def __getitem__(self, name: str) -> str:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def check(self, name: Any) -> None:
        """A registered name, or an error that lists the registered ones."""
        if not isinstance(name, str) or name not in self._entries:
            raise CmhashError(f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(sorted(self._entries))}.")

    def load(self, name: str) -> Any:
        """The component ``name``: its module, or the attribute of it that the entry names."""
        self.check(name)
        module, _, attribute = self._entries[name].partition(":")
        loaded = importlib.import_module(module)
        return getattr(loaded, attribute) if attribute else loaded
