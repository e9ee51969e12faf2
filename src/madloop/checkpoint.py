"""Checkpoints: what a loop needs to go on after a crash, written atomically and checksummed.

Layout, one directory per arm under ``RUN/checkpoints/``::

    <arm>/records/gen000007.npz     the metrics, provenance and failures of generation 7 (kept)
    <arm>/gen000007/model.npz       the chain model's ``get_state()`` arrays
    <arm>/gen000007/kept.npz        what the regime keeps (``Loop.kept``: Points / Stats, frames)
    <arm>/gen000007/source.npz      the real source's ``get_state()``, when it has one
    <arm>/gen000007/index.json      written last: loop counters, config, SHA-256 of every file

Every file is written to a temporary name and renamed, so a crash (SIGKILL, an exception, OOM)
never leaves half a file under a real name. Files are not fsync'ed by default (on this project's
machines that tripled the cost of a checkpoint, see ``benchmarks/checkpoint_overhead.py``): after
a power loss, unflushed files fail their checksum and the previous checkpoint is used. Pass
``fsync=True`` for durability against power loss too.

A checkpoint exists only once its ``index.json`` does (temp file + rename), and it is trusted only
when every file it lists - its own and the records of generations 1..t - has the SHA-256 written
there; the index checksums itself too. Anything else (a missing, truncated or flipped file) is
reported by name and the previous checkpoint is tried; only the newest ``keep`` are kept.

Arrays only: ``.npz`` read with ``allow_pickle=False``, so a checkpoint handed to someone cannot
run code. Strings and nesting live in the JSON index.

Random state: the loop draws generation t from ``SeedSequence(seed, spawn_key=(stream, t))``, and
the real source is rebuilt from ``SeedSequence(seed, spawn_key=(0,))``; no generator lives across
generations, so nothing beyond the generation counter is needed to resume the random streams.
Families get a fresh generator per call by contract (stateful ones keep what they need in
``get_state``); a source with evolving state (e.g. which real points were used) may implement
``get_state`` / ``set_state`` as well.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import io
import json
import os
import re
import shutil
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from madloop.loop import GenerationRecord, Loop
from madloop.types import Frame, Points, Stats

FORMAT = 1
Log = Callable[[str], None]
_GEN = re.compile(r"^gen(\d{6,})$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be trusted; the message names the file and why."""


# -- files ----------------------------------------------------------------------------------------
def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(path: Path, data: bytes, *, fsync: bool = True) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)


_LAYOUT = "__layout__/"


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Arrays -> .npz bytes, memory layout included.

    Layout matters for bit-exact resumes: numpy's batched matmul takes a BLAS path or its own
    loop depending on strides, and the two round differently. So an array stored as a transposed
    view or a broadcast (stride 0) comes back as the same kind of view (see :func:`load_npz`).
    """
    out: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        a = np.asarray(value)
        if key.startswith(_LAYOUT):
            raise ValueError(f"array names starting with {_LAYOUT!r} are reserved, got {key!r}")
        if a.ndim < 2 or a.flags.c_contiguous or a.flags.f_contiguous:
            out[key] = a
            continue
        strides = np.asarray(a.strides)
        broadcast = strides == 0
        core = a[tuple(slice(0, 1) if b else slice(None) for b in broadcast)]
        order = np.argsort(-np.abs(np.asarray(core.strides)), kind="stable")
        out[key] = np.ascontiguousarray(core.transpose(order))
        out[_LAYOUT + key] = np.concatenate([order, broadcast.astype(np.int64), a.shape])
    buf = io.BytesIO()
    np.savez(buf, **out)
    return buf.getvalue()


def load_npz(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        raw = {k: npz[k] for k in npz.files}
    out = {k: v for k, v in raw.items() if not k.startswith(_LAYOUT)}
    for key, layout in raw.items():
        if not key.startswith(_LAYOUT):
            continue
        name = key[len(_LAYOUT) :]
        n = layout.size // 3
        order, broadcast, shape = (
            layout[:n],
            layout[n : 2 * n],
            tuple(int(x) for x in layout[2 * n :]),
        )
        a = out[name].transpose(np.argsort(order))
        out[name] = np.broadcast_to(a, shape) if broadcast.any() else a
    return out


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()


def arm_dirname(name: str) -> str:
    """A file-system-safe, collision-free directory name for an arm."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "arm"
    if safe != name:
        safe = f"{safe[:60]}-{zlib.crc32(name.encode()):08x}"
    return safe


# -- what a loop holds -> arrays ------------------------------------------------------------------
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


def encode_record(rec: GenerationRecord) -> dict[str, np.ndarray]:
    names = list(rec.metrics)
    keys = sorted(rec.provenance)
    arrays = {
        "generation": np.asarray(rec.generation),
        "metric_names": np.asarray(names, dtype=str),
        "prov_keys": np.asarray(keys, dtype=np.int64).reshape(len(keys), 2),
        "train_size": np.asarray(rec.train_size),
        "failed_replicates": np.asarray(sorted(rec.failures), dtype=np.int64),
        "failed_reasons": np.asarray([rec.failures[r] for r in sorted(rec.failures)], dtype=str),
    }
    for i, name in enumerate(names):
        arrays[f"metric{i}"] = np.asarray(rec.metrics[name])
    for i, k in enumerate(keys):
        arrays[f"prov{i}"] = np.asarray(rec.provenance[k])
    return arrays


def decode_record(a: Mapping[str, np.ndarray]) -> GenerationRecord:
    names = [str(n) for n in a["metric_names"]]
    keys = [(int(k[0]), int(k[1])) for k in a["prov_keys"]]
    return GenerationRecord(
        int(a["generation"]),
        {name: a[f"metric{i}"] for i, name in enumerate(names)},
        {k: a[f"prov{i}"] for i, k in enumerate(keys)},
        a["train_size"],
        {int(r): str(w) for r, w in zip(a["failed_replicates"], a["failed_reasons"], strict=True)},
    )


# -- one arm's checkpoints ----------------------------------------------------------------------
@dataclass
class Restored:
    generation: int
    records: list[GenerationRecord]
    finished: bool


def config_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON-like configs."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += config_diff(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]


class ArmCheckpoints:
    """Checkpoints of one arm of a run: :meth:`save` after a generation, :meth:`restore` a loop.

    ``config`` is the arm's config as JSON data; a checkpoint made under another config (other
    than ``generations``, which a resume may raise) is refused rather than silently mixed.
    """

    def __init__(
        self,
        root: Path,
        arm: str,
        config: Mapping[str, Any],
        *,
        keep: int = 2,
        fsync: bool = False,
        log: Log | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.arm = arm
        self.dir = Path(root) / arm_dirname(arm)
        self.records_dir = self.dir / "records"
        self.config = json.loads(_canonical(dict(config)))
        self.keep = keep
        self.fsync = fsync
        self.log = log or (lambda msg: None)
        self.extra = dict(extra or {})
        self._record_sha: dict[str, str] = {}

    # -- writing --------------------------------------------------------------------------------
    def save_record(self, rec: GenerationRecord) -> None:
        """Write one generation's record (call for every generation, checkpointed or not)."""
        self.records_dir.mkdir(parents=True, exist_ok=True)
        name = f"gen{rec.generation:06d}.npz"
        data = npz_bytes(encode_record(rec))
        _write(self.records_dir / name, data, fsync=self.fsync)
        self._record_sha[name] = sha256(data)

    def save(self, loop: Loop, *, finished: bool = False) -> Path:
        """Checkpoint ``loop`` after its current generation (its record must be saved already)."""
        t = loop.generation
        final = self.dir / f"gen{t:06d}"
        if final.exists():  # a stale or corrupt copy: never mix old and new files
            shutil.rmtree(final)
        final.mkdir(parents=True)
        files: dict[str, str] = {}
        kept_arrays, kept_meta = encode_kept(loop.kept)
        parts = {"model.npz": loop.model.get_state(), "kept.npz": kept_arrays}
        if hasattr(loop.real, "get_state"):
            parts["source.npz"] = loop.real.get_state()
        for fname, arrays in parts.items():
            data = npz_bytes(arrays)
            _write(final / fname, data, fsync=self.fsync)
            files[fname] = sha256(data)
        records = {f"gen{g:06d}.npz": None for g in range(1, t + 1)}
        missing = [r for r in records if r not in self._record_sha]
        for r in missing:  # records of a restored run, verified when it was restored
            self._record_sha[r] = sha256((self.records_dir / r).read_bytes())
        index = {
            "format": FORMAT,
            "arm": self.arm,
            "generation": t,
            "finished": finished,
            "loop": {
                "generation": t,
                "failed": {str(r): [g, why] for r, (g, why) in sorted(loop.failed.items())},
                "stopped": loop.stopped,
                "metric_names": loop._metric_names,
            },
            "kept": kept_meta,
            "config": self.config,
            "rng": "generation t draws from SeedSequence(seed, spawn_key=(stream, t)); "
            "no generator state is carried between generations",
            "files": files,
            "records": {r: self._record_sha[r] for r in records},
            **self.extra,
        }
        index["index_sha256"] = sha256(_canonical(index))
        _write(final / "index.json", json.dumps(index, indent=1).encode(), fsync=self.fsync)
        self._prune()
        return final

    def _prune(self) -> None:
        complete = [p for p in self._generation_dirs() if (p / "index.json").exists()]
        for p in complete[self.keep :]:
            shutil.rmtree(p, ignore_errors=True)
        for p in self._generation_dirs():
            if not (p / "index.json").exists():
                shutil.rmtree(p, ignore_errors=True)

    # -- reading --------------------------------------------------------------------------------
    def _generation_dirs(self) -> list[Path]:
        """Generation directories, newest first."""
        if not self.dir.is_dir():
            return []
        found = [(int(m[1]), p) for p in self.dir.iterdir() if (m := _GEN.match(p.name))]
        return [p for _, p in sorted(found, reverse=True)]

    def exists(self) -> bool:
        return any((p / "index.json").exists() for p in self._generation_dirs())

    def _read_verified(self, path: Path, expected: str) -> bytes:
        rel = path.relative_to(self.dir.parent.parent)
        try:
            data = path.read_bytes()
        except OSError as err:
            raise CheckpointError(f"{rel}: cannot be read ({err.strerror or err})") from None
        if sha256(data) != expected:
            raise CheckpointError(
                f"{rel}: SHA-256 mismatch ({len(data)} bytes; corrupt or truncated)"
            )
        return data

    def _verify(self, gen_dir: Path) -> tuple[dict, dict[str, bytes]]:
        rel = gen_dir.relative_to(self.dir.parent.parent)
        try:
            index = json.loads((gen_dir / "index.json").read_bytes())
        except FileNotFoundError:
            raise CheckpointError(f"{rel}/index.json: missing (checkpoint incomplete)") from None
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{rel}/index.json: unreadable ({err})") from None
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise CheckpointError(f"{rel}/index.json: not a format-{FORMAT} checkpoint index")
        claimed = index.pop("index_sha256", None)
        if claimed != sha256(_canonical(index)):
            raise CheckpointError(f"{rel}/index.json: SHA-256 mismatch (corrupt)")
        blobs = {n: self._read_verified(gen_dir / n, h) for n, h in index["files"].items()}
        for name, h in index["records"].items():
            blobs["records/" + name] = self._read_verified(self.records_dir / name, h)
        return index, blobs

    def restore(self, loop: Loop) -> Restored | None:
        """Restore ``loop`` from the newest intact checkpoint; None when there is none (the arm
        starts from generation 0). Each checkpoint skipped is reported through ``log``."""
        candidates = self._generation_dirs()
        for i, gen_dir in enumerate(candidates):
            try:
                index, blobs = self._verify(gen_dir)
            except CheckpointError as err:
                nxt = candidates[i + 1].name if i + 1 < len(candidates) else None
                then = f"falling back to {nxt}" if nxt else "starting the arm from generation 0"
                self.log(f"arm '{self.arm}': checkpoint {gen_dir.name} rejected: {err}; {then}")
                continue
            # more generations may be asked of a resumed run; names and which arms run do not
            # change an arm's numbers
            diff = [
                k
                for k in config_diff(index["config"], self.config)
                if k not in ("generations", "name", "include_base")
            ]
            if diff:
                raise CheckpointError(
                    f"arm '{self.arm}': the checkpoints in {self.dir} were made with another "
                    f"config (differs in: {', '.join(diff)}); resume with the same config or "
                    "start a new run with another --out"
                )
            then, now = index.get("versions"), self.extra.get("versions")
            if then and now and then != now:
                changed = ", ".join(
                    f"{k} {then.get(k)} -> {now.get(k)}"
                    for k in sorted(set(then) | set(now))
                    if then.get(k) != now.get(k)
                )
                self.log(
                    f"arm '{self.arm}': checkpoint {gen_dir.name} was written with other "
                    f"versions ({changed}); the resumed numbers may differ from an "
                    "uninterrupted run's"
                )
            self._apply(loop, index, blobs)
            records = [
                decode_record(load_npz(blobs["records/" + name]))
                for name in sorted(index["records"])
            ]
            self._record_sha = dict(index["records"])
            return Restored(index["generation"], records, bool(index["finished"]))
        return None

    @staticmethod
    def _apply(loop: Loop, index: dict, blobs: dict[str, bytes]) -> None:
        state = load_npz(blobs["model.npz"])
        if state:
            loop.model.set_state(state)
        loop.kept = decode_kept(load_npz(blobs["kept.npz"]), index["kept"])
        if "source.npz" in blobs and hasattr(loop.real, "set_state"):
            loop.real.set_state(load_npz(blobs["source.npz"]))
        info = index["loop"]
        loop.generation = int(info["generation"])
        loop.failed = {int(r): (int(g), str(w)) for r, (g, w) in info["failed"].items()}
        loop.stopped = info["stopped"]
        loop._metric_names = list(info["metric_names"])


def run_has_checkpoints(out: Path) -> bool:
    root = Path(out) / "checkpoints"
    return root.is_dir() and any(root.glob("*/gen*/index.json"))


class RunLock:
    """An exclusive lock on a run directory for as long as a run writes it (``flock``: released
    by the kernel when the process dies, so a crash never leaves a stale lock)."""

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / ".madloop.lock"
        self.fh: Any = None

    def __enter__(self) -> RunLock:
        import fcntl

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fh = open(self.path, "a+")
        except OSError as err:
            raise CheckpointError(
                f"{self.path.parent} cannot be used as a run directory ({err.strerror or err})"
            ) from None
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.seek(0)
            holder = self.fh.read().strip() or "another process"
            self.fh.close()
            raise CheckpointError(
                f"{self.path.parent} is being written by another madloop run ({holder}); "
                "wait for it or choose another --out"
            ) from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"pid {os.getpid()}")
        self.fh.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fh is not None:
            self.fh.close()  # closing releases the lock
