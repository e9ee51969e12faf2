"""Checkpoints: what an engine needs to go on after a crash, written atomically and checksummed.

A checkpoint sees an engine only through :class:`madloop.loop.Engine`: its ``generation``, its
records and its ``get_state()`` / ``set_state()`` arrays, named ``group/key``; each group is one
file. Layout, one directory per arm under ``RUN/checkpoints/``::

    <arm>/records/gen000005-000007.npz
                                    the records of generations 5 to 7 (metrics, provenance,
                                    failures; one per label of the engine, e.g. per pool
                                    lineage), written with the checkpoint of generation 7 and
                                    kept for good (``gen000007.npz`` when it holds one)
    <arm>/gen000007/<group>.npz     the engine's state, one file per group. A Loop writes
                                    model.npz (the family's ``get_state()``), kept.npz (what the
                                    regime keeps), loop.npz (counters, stopped chains) and
                                    source.npz (the real source's state, when it has one); a
                                    web pool writes pool.npz, lineages.npz, samplers.npz, ...
    <arm>/gen000007/index.json      written last: config, versions, SHA-256 of every file

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
run code. Strings are unicode arrays (see :mod:`madloop.state`).

Random state: an engine draws generation t from ``SeedSequence(seed, spawn_key=(stream, t, ...))``,
and
the real source is rebuilt from ``SeedSequence(seed, spawn_key=(0,))``; no generator lives across
generations, so nothing beyond the generation counter is needed to resume the random streams.
Families get a fresh generator per call by contract (stateful ones keep what they need in
``get_state``); a source with evolving state (e.g. which real points were used) may implement
``get_state`` / ``set_state`` as well.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from madloop.loop import Engine, GenerationRecord
from madloop.state import (  # noqa: F401  (re-exported: the batch encoders lived here)
    CheckpointError,
    decode_dataclass,
    decode_kept,
    encode_dataclass,
    encode_kept,
)
from madloop.storage import write_atomic

FORMAT = 2  # 2: any engine's state, one file per state group; records hold every label's
Log = Callable[[str], None]
_GEN = re.compile(r"^gen(\d{6,})$")
_GROUP = re.compile(r"^[a-z][a-z0-9_]*$")


# -- files ----------------------------------------------------------------------------------------
def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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


# -- records --------------------------------------------------------------------------------------
def encode_record(rec: GenerationRecord) -> dict[str, np.ndarray]:
    names = list(rec.metrics)
    keys = sorted(rec.provenance)
    width = 2 + len(rec.provenance_columns)
    arrays = {
        "generation": np.asarray(rec.generation),
        "arm": np.asarray(rec.arm),
        "provenance_columns": np.asarray(rec.provenance_columns, dtype=str),
        "metric_names": np.asarray(names, dtype=str),
        "prov_keys": np.asarray(keys, dtype=np.int64).reshape(len(keys), width),
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
    keys = [tuple(int(x) for x in k) for k in a["prov_keys"]]
    return GenerationRecord(
        int(a["generation"]),
        {name: a[f"metric{i}"] for i, name in enumerate(names)},
        {k: a[f"prov{i}"] for i, k in enumerate(keys)},
        a["train_size"],
        {int(r): str(w) for r, w in zip(a["failed_replicates"], a["failed_reasons"], strict=True)},
        arm=str(a["arm"]),
        provenance_columns=tuple(str(c) for c in a["provenance_columns"]),
    )


def encode_records(records: list[GenerationRecord]) -> dict[str, np.ndarray]:
    """Records (one per label, of one or several generations) as arrays for one file. A field
    with the same shape and dtype in every record is stacked into one array ``all/<field>``
    (a file of many generations holds a few dozen arrays, not thousands: writing each array
    of a .npz costs about as much as a generation of a fast loop); the rest is kept per
    record as ``rec<i>/<field>``."""
    encoded = [encode_record(rec) for rec in records]
    out = {"count": np.asarray(len(records))}
    for key in encoded[0] if encoded else ():
        first = encoded[0][key]
        if all(key in e and e[key].shape == first.shape and e[key].dtype == first.dtype
               for e in encoded):  # fmt: skip
            out[f"all/{key}"] = np.stack([e[key] for e in encoded])
    for i, e in enumerate(encoded):
        out |= {f"rec{i}/{k}": v for k, v in e.items() if f"all/{k}" not in out}
    return out


def decode_records(a: Mapping[str, np.ndarray]) -> list[GenerationRecord]:
    stacked = {k[len("all/") :]: v for k, v in a.items() if k.startswith("all/")}
    out = []
    for i in range(int(a["count"])):
        p = f"rec{i}/"
        own = {k[len(p) :]: v for k, v in a.items() if k.startswith(p)}
        out.append(decode_record({**{k: v[i] for k, v in stacked.items()}, **own}))
    return out


# -- when to checkpoint ---------------------------------------------------------------------------
AUTO_SHARE = 0.05  # the automatic cadence keeps checkpoints to this share of a run's time


class Cadence:
    """When an arm checkpoints: every ``every`` generations, or with ``every=None`` whenever the
    time since the last checkpoint is at least ``1 / share`` times what that checkpoint took
    (and after the first generation). Checkpoints then cost at most ``share`` of the run: a slow
    model is checkpointed after every generation, a loop of milliseconds a generation every few
    dozen, and a crash loses at most about ``1 / share`` checkpoints' worth of work. The arm's
    last generation is always checkpointed (the caller's ``last``).

    Which generations get a checkpoint never changes the numbers: a resume from any of them is
    bit-identical to an uninterrupted run.
    """

    def __init__(self, every: int | None, share: float | None = None) -> None:
        if every is not None and every < 1:
            raise ValueError(f"every must be >= 1 or None, got {every}")
        self.every = every
        self.share = AUTO_SHARE if share is None else share
        self.cost = 0.0  # seconds the last checkpoint took
        self.since = time.perf_counter()  # when it ended

    def due(self, generation: int, *, last: bool = False) -> bool:
        if last:
            return True
        if self.every is not None:
            return generation % self.every == 0
        return time.perf_counter() - self.since >= self.cost / self.share

    def saved(self, started: float) -> None:
        """A checkpoint that began at ``started`` (``time.perf_counter()``) just ended."""
        self.since = time.perf_counter()
        self.cost = self.since - started


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
        self._record_sha: dict[str, str] = {}  # record file -> SHA-256, generations 1..t
        self._pending: list[GenerationRecord] = []  # records since the last checkpoint

    # -- writing --------------------------------------------------------------------------------
    def save_records(self, records: list[GenerationRecord]) -> None:
        """Keep one generation's records, one per label of the engine (call for every
        generation, checkpointed or not); the next :meth:`save` writes them, in one file."""
        self._pending.extend(records)

    def save_record(self, rec: GenerationRecord) -> None:
        """:meth:`save_records` for an engine with one label."""
        self.save_records([rec])

    def _flush_records(self) -> None:
        """Write the records kept since the last checkpoint as one file (one file per
        generation cost more than the checkpoint itself for a fast loop)."""
        if not self._pending:
            return
        first, last = self._pending[0].generation, self._pending[-1].generation
        name = f"gen{first:06d}.npz" if first == last else f"gen{first:06d}-{last:06d}.npz"
        self.records_dir.mkdir(parents=True, exist_ok=True)
        data = npz_bytes(encode_records(self._pending))
        write_atomic(self.records_dir / name, data, fsync=self.fsync)
        self._record_sha[name] = sha256(data)
        self._pending = []

    def save(self, engine: Engine, *, finished: bool = False) -> Path:
        """Checkpoint ``engine`` after its current generation (its records must be saved
        already): its ``get_state()``, one ``<group>.npz`` per ``group/`` prefix of the names."""
        t = engine.generation
        final = self.dir / f"gen{t:06d}"
        if final.exists():  # a stale or corrupt copy: never mix old and new files
            shutil.rmtree(final)
        final.mkdir(parents=True)
        self._flush_records()
        files: dict[str, str] = {}
        for fname, arrays in split_state(engine.get_state()).items():
            data = npz_bytes(arrays)
            write_atomic(final / fname, data, fsync=self.fsync)
            files[fname] = sha256(data)
        index = {
            "format": FORMAT,
            "arm": self.arm,
            "generation": t,
            "finished": finished,
            "config": self.config,
            "rng": "generation t draws from SeedSequence(seed, spawn_key=(stream, t, ...)); "
            "no generator state is carried between generations",
            "files": files,
            "records": dict(sorted(self._record_sha.items())),  # generations 1..t
            **self.extra,
        }
        index["index_sha256"] = sha256(_canonical(index))
        write_atomic(final / "index.json", json.dumps(index, indent=1).encode(), fsync=self.fsync)
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

    def restore(self, engine: Engine) -> Restored | None:
        """Restore ``engine`` from the newest intact checkpoint; None when there is none (the arm
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
            state: dict[str, np.ndarray] = {}
            for fname in index["files"]:
                stem = fname.removesuffix(".npz")
                state |= {f"{stem}/{k}": v for k, v in load_npz(blobs[fname]).items()}
            engine.set_state(state)
            records = [
                rec
                for name in sorted(index["records"])
                for rec in decode_records(load_npz(blobs["records/" + name]))
            ]
            self._record_sha = dict(index["records"])
            self._pending = []
            return Restored(index["generation"], records, bool(index["finished"]))
        return None


def split_state(state: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """An engine's state by file: ``group/key`` -> ``{group}.npz`` holding ``key``."""
    files: dict[str, dict[str, Any]] = {}
    for name, value in state.items():
        grp, sep, key = name.partition("/")
        if not sep or not _GROUP.match(grp):
            raise ValueError(f"engine state names are 'group/key' (group [a-z0-9_]), got {name!r}")
        files.setdefault(f"{grp}.npz", {})[key] = value
    return files


def run_has_checkpoints(out: Path) -> bool:
    root = Path(out) / "checkpoints"
    return root.is_dir() and any(root.glob("*/gen*/index.json"))
