"""One shape for every registry: data sources, model families, regimes, metric suites, theories,
curation scorers.

A :class:`Registry` is a dict from name to entry. ``register(entry)`` adds an entry under its
``name`` (usable as a decorator). :meth:`Registry.load` loads, where the registry has an entry
point group, what installed packages publish there, and makes the built-in modules that register
entries load on demand (tolerating a missing optional extra such as torch): looking up a name
imports the built-ins in order until one registered it, listing the registry imports them all.
So validating a Gaussian config never imports torch. An entry point still wins over a built-in
of the same name. Each happens once. A config names an entry; it never names code to import.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def entry_points(group: str) -> Any:
    """``importlib.metadata.entry_points(group=...)``, imported when first needed (it is slow)."""
    from importlib import metadata

    return metadata.entry_points(group=group)


class Registry(dict[str, T], Generic[T]):
    """Entries by name (a dict), with the modules that fill it."""

    def __init__(
        self,
        kind: str,
        *,
        builtins: Iterable[str] = (),
        entry_point: str | None = None,
        check: Callable[[Any], bool] | None = None,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.builtins = tuple(builtins)
        self.entry_point = entry_point
        self.check = check
        self._loaded = False
        self._pending: list[str] = []  # built-in modules not imported yet
        self._plugins: dict[str, T] = {}  # entries from entry points (they win over built-ins)

    def register(self, entry: T) -> T:
        """Add ``entry`` under ``entry.name`` (or ``entry.__name__``); returns it (a decorator)."""
        name = getattr(entry, "name", None) or getattr(entry, "__name__", None)
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} needs a non-empty name, got {entry!r}")
        self[name] = entry
        return entry

    def load(self) -> Registry[T]:
        """Import the built-in modules (once), then the entry points; return the registry."""
        if self._loaded:
            return self
        self._loaded = True
        self._pending = list(self.builtins)  # imported on demand, see _ensure
        if self.entry_point is not None:
            self._load_entry_points(self.entry_point)
        return self

    def _ensure(self, name: str | None = None) -> None:
        """Import the pending built-ins, in order, until ``name`` is registered (all of them
        for ``None``)."""
        while self._pending and (name is None or not dict.__contains__(self, name)):
            module = self._pending.pop(0)
            try:
                importlib.import_module(module)
            except ImportError:  # an optional extra (torch, ...) is missing
                continue
            dict.update(self, self._plugins)

    def __contains__(self, name: object) -> bool:
        self._ensure(name if isinstance(name, str) else None)
        return dict.__contains__(self, name)

    def __getitem__(self, name: str) -> T:
        self._ensure(name)
        return dict.__getitem__(self, name)

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        self._ensure(name)
        return dict.get(self, name, default)

    def __iter__(self) -> Any:
        self._ensure()
        return dict.__iter__(self)

    def __len__(self) -> int:
        self._ensure()
        return dict.__len__(self)

    def keys(self) -> Any:  # type: ignore[override]
        self._ensure()
        return dict.keys(self)

    def values(self) -> Any:  # type: ignore[override]
        self._ensure()
        return dict.values(self)

    def items(self) -> Any:  # type: ignore[override]
        self._ensure()
        return dict.items(self)

    def _load_entry_points(self, group: str) -> None:
        for ep in entry_points(group=group):
            try:
                entry = ep.load()
                if self.check is not None and not self.check(entry) and callable(entry):
                    entry = entry()  # a factory that returns the entry
            except Exception as err:  # a broken plug-in must not break every config
                warnings.warn(
                    f"{group} entry point {ep.name!r} ({ep.value}) failed to load: "
                    f"{type(err).__name__}: {err}",
                    RuntimeWarning,
                    stacklevel=3,
                )
                continue
            if self.check is not None and not self.check(entry):
                warnings.warn(
                    f"{group} entry point {ep.name!r} gave {type(entry).__name__}, not a "
                    f"{self.kind}; ignored",
                    RuntimeWarning,
                    stacklevel=3,
                )
                continue
            self.register(entry)
            name = getattr(entry, "name", None) or getattr(entry, "__name__", None)
            self._plugins[name] = entry
