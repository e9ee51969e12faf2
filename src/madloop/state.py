"""An engine's state as arrays: batches, counters and strings encoded for ``Engine.get_state``.

Everything an engine needs to resume goes into one flat ``{name: array}`` dict, so that the
checkpoint can store it as ``.npz`` read with ``allow_pickle=False`` (a checkpoint handed to
someone cannot run code). Names are ``group/key``: :mod:`madloop.checkpoint` writes each group to
its own file (``model.npz``, ``kept.npz``...). Strings (JSON descriptions, reasons) are stored as
unicode arrays, which numpy loads without unpickling.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from madloop.types import Frame, Points, Stats


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be trusted; the message names the file and why."""


# -- names and strings ----------------------------------------------------------------------------
def prefixed(prefix: str, arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``arrays`` under ``prefix/`` (values kept as they are: their memory layout matters)."""
    return {f"{prefix}/{k}": v for k, v in arrays.items()}


def group(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The entries of ``state`` under ``prefix/``, with the prefix removed."""
    p = prefix + "/"
    return {k[len(p) :]: v for k, v in state.items() if k.startswith(p)}


def text(value: Any) -> np.ndarray:
    """JSON data as a 0-d unicode array."""
    return np.asarray(json.dumps(value, sort_keys=True))


def untext(array: Any) -> Any:
    return json.loads(str(np.asarray(array)[()]))


def encode_failed(failed: Mapping[int, tuple[int, str]], stopped: str | None) -> dict:
    """Stopped chains (replicate -> (generation, reason)) and why every chain stopped."""
    return {
        "failed": text({str(r): [g, why] for r, (g, why) in sorted(failed.items())}),
        "stopped": text(stopped),
    }


def decode_failed(arrays: Mapping[str, Any]) -> tuple[dict[int, tuple[int, str]], str | None]:
    failed = {int(r): (int(g), str(w)) for r, (g, w) in untext(arrays["failed"]).items()}
    return failed, untext(arrays["stopped"])


# -- batches --------------------------------------------------------------------------------------
def encode_batches(batches: Mapping[str, Points | Stats]) -> dict[str, np.ndarray]:
    """:func:`encode_kept` with its description included, as ``__meta__``."""
    arrays, meta = encode_kept(batches)
    return {**arrays, "__meta__": text(meta)}


def decode_batches(arrays: Mapping[str, np.ndarray]) -> dict[str, Points | Stats]:
    return decode_kept(arrays, untext(arrays["__meta__"]))


def encode_kept(kept: Mapping[str, Points | Stats]) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Arrays and a JSON description of ``Loop.kept``. Frames are stored once each and restored
    as shared objects, since :meth:`Points.concat` compares frames by identity."""
    arrays: dict[str, np.ndarray] = {}
    meta: list[dict] = []
    frames: dict[int, int] = {}
    for i, (name, batch) in enumerate(kept.items()):
        p = f"k{i}/"
        if isinstance(batch, Stats):
            arrays |= {p + "count": batch.count, p + "mean": batch.mean, p + "factor": batch.factor}
            keys = sorted(batch.provenance)
            arrays[p + "prov_keys"] = np.asarray(keys, dtype=np.int64).reshape(len(keys), 2)
            arrays[p + "prov_counts"] = np.asarray([np.asarray(batch.provenance[k]) for k in keys])
            meta.append({"name": name, "kind": "stats"})
            continue
        if not isinstance(batch, Points):  # another family's sufficient statistics (Counts...)
            meta.append({"name": name, **encode_dataclass(batch, p, arrays)})
            continue
        arrays |= {p + "X": batch.X, p + "source": batch.source, p + "origin": batch.origin}
        if batch.y is not None:
            arrays[p + "y"] = batch.y
        frame = None
        if batch.frame is not None:
            frame = frames.setdefault(id(batch.frame), len(frames))
            arrays[f"frame{frame}/offset"] = batch.frame.offset
            arrays[f"frame{frame}/factor"] = batch.frame.factor
        meta.append({"name": name, "kind": "points", "y": batch.y is not None, "frame": frame})
    return arrays, meta


def decode_kept(arrays: Mapping[str, np.ndarray], meta: list[dict]) -> dict[str, Points | Stats]:
    frames: dict[int, Frame] = {}
    out: dict[str, Points | Stats] = {}
    for i, item in enumerate(meta):
        p = f"k{i}/"
        if item["kind"] == "dataclass":
            out[item["name"]] = decode_dataclass(item, p, arrays)
            continue
        if item["kind"] == "stats":
            keys = arrays[p + "prov_keys"]
            counts = arrays[p + "prov_counts"]
            prov = {(int(k[0]), int(k[1])): counts[j] for j, k in enumerate(keys)}
            out[item["name"]] = Stats(
                arrays[p + "count"], arrays[p + "mean"], arrays[p + "factor"], prov
            )
            continue
        frame = None
        if item["frame"] is not None:
            j = int(item["frame"])
            if j not in frames:
                frames[j] = Frame(arrays[f"frame{j}/offset"], arrays[f"frame{j}/factor"])
            frame = frames[j]
        out[item["name"]] = Points(
            arrays[p + "X"],
            arrays[p + "source"],
            arrays[p + "origin"],
            arrays[p + "y"] if item["y"] else None,
            frame,
        )
    return out


def encode_dataclass(batch: Any, prefix: str, arrays: dict[str, np.ndarray]) -> dict:
    """A batch type of madloop's own (a dataclass of arrays, None and provenance-like dicts with
    integer-tuple keys) -> arrays under ``prefix`` and a JSON description."""
    cls = type(batch)
    if not dataclasses.is_dataclass(batch) or not cls.__module__.startswith("madloop."):
        raise CheckpointError(f"cannot checkpoint a kept batch of type {cls.__qualname__}")
    fields = {}
    for f in dataclasses.fields(batch):
        value = getattr(batch, f.name)
        if value is None:
            fields[f.name] = "none"
        elif isinstance(value, dict):
            keys = sorted(value)
            width = len(keys[0]) if keys else 0
            arrays[f"{prefix}{f.name}/keys"] = np.asarray(keys, dtype=np.int64).reshape(-1, width)
            arrays[f"{prefix}{f.name}/values"] = np.asarray([np.asarray(value[k]) for k in keys])
            fields[f.name] = "dict"
        else:
            arrays[prefix + f.name] = np.asarray(value)
            fields[f.name] = "array"
    return {"kind": "dataclass", "type": f"{cls.__module__}:{cls.__qualname__}", "fields": fields}


def decode_dataclass(item: Mapping[str, Any], prefix: str, arrays: Mapping) -> Any:
    """The inverse of :func:`encode_dataclass`; only dataclasses of madloop's own modules."""
    module, _, qualname = str(item["type"]).partition(":")
    if not module.startswith("madloop.") or "." in qualname:
        raise CheckpointError(f"kept batch type {item['type']!r} is not one of madloop's")
    cls = getattr(importlib.import_module(module), qualname, None)
    if cls is None or not dataclasses.is_dataclass(cls):
        raise CheckpointError(f"kept batch type {item['type']!r} is not one of madloop's")
    kwargs: dict[str, Any] = {}
    for name, kind in item["fields"].items():
        if kind == "none":
            kwargs[name] = None
        elif kind == "dict":
            keys, values = arrays[f"{prefix}{name}/keys"], arrays[f"{prefix}{name}/values"]
            kwargs[name] = {tuple(int(x) for x in k): values[i] for i, k in enumerate(keys)}
        else:
            kwargs[name] = arrays[prefix + name]
    return cls(**kwargs)
