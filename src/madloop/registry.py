"""One shape for every registry: data sources, model families, regimes, metric suites, theories,
curation scorers.

A :class:`Registry` is a dict from name to entry. ``register(entry)`` adds an entry under its
``name`` (usable as a decorator). :meth:`Registry.load` imports the built-in modules that register
entries (tolerating a missing optional extra such as torch) and, where the registry has an entry
point group, what installed packages publish there; each happens once. A config names an entry;
it never names code to import.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")


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
        for module in self.builtins:
            try:
                importlib.import_module(module)
            except ImportError:  # an optional extra (torch, ...) is missing
                pass
        if self.entry_point is not None:
            self._load_entry_points(self.entry_point)
        return self

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
