"""How much memory and disk a run will need, before it starts (``madloop run --dry-run``).

The estimate is computed from the config alone - dimensions, training-set sizes per generation
(pools of accumulating regimes grow), replicates, generations, family and mode - and compared
with what the machine has free (``/proc/meminfo`` / cgroup limits / ``os.sysconf`` and
``shutil.disk_usage``; no psutil). A run that would not fit is refused with the estimate and the
knob that dominates it.

Memory model (peak of the largest arm; arms run one after another):
- ``points`` mode holds a generation's batch ``R x m x e`` float64 (R replicates, m rows - the
  union of its parts before any subsample -, e numbers per row) ``SINGLE_COPIES`` times when a
  generation is one batch, ``POINTS_COPIES`` times when it unites several (the draws, their
  union, a kept copy, the fit's work arrays), plus what the regime keeps (a pool of up to ``k``
  rows per replicate), plus the model state (``ModelConfig.state_size``, when declared).
- ``exact`` mode holds sufficient statistics: ``R x (e^2 + e + 1)`` floats per batch.
- a family's fit may hold ``ModelConfig.fit_batch_copies`` more arrays of a batch's size, and
  ``loop.curation`` draws K candidates per synthetic point (``CURATION_COPIES`` arrays of
  ``R x K x m x (e + 2)``).
The constants were calibrated with ``tracemalloc`` on the Gaussian family and are checked by
``tests/test_resources.py`` (the estimate must bound the measured peak, within a factor 4).
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from madloop.regimes import Draw, Regime

FLOAT = 8
POINTS_COPIES = 6  # a union of batches: draws, union, kept copy, the fit's work arrays
SINGLE_COPIES = 2  # one batch per generation (fully synthetic): the draw and the fit's work
STATE_COPIES = 12  # a fit's and the metrics' work arrays of the model's size
CURATION_COPIES = 3  # loop.curation: the K candidates, their rewards and Gumbel keys, the pick
BASELINE = 200 * 2**20  # the interpreter, numpy, pandas, pydantic...
TABLE_ROW = 100  # bytes per (arm, generation, replicate, metric, value) row, with pandas copies
DEFAULT_METRICS = 10  # when the metric suites are not known before running


def iter_training_sizes(regime: Regime, generations: int) -> Iterator[tuple[int, int, int]]:
    """(t, training-set rows, rows kept in total) per replicate for t = 1..T, by following the
    regime's recipe (pools of accumulating regimes grow; subsampling caps the training set)."""
    kept: dict[str, int] = {}
    for t in range(1, generations + 1):
        comp = regime.compose(t)
        size = sum(p.size if isinstance(p, Draw) else kept.get(p.name, 0) for p in comp.parts)
        if comp.subsample is not None:
            size = min(size, comp.subsample)
        for name, parts in comp.keep.items():
            kept[name] = sum(p.size if isinstance(p, Draw) else kept.get(p.name, 0) for p in parts)
        yield t, size, sum(kept.values())


def union_profile(regime: Regime, generations: int) -> tuple[int, bool]:
    """(largest union of a generation's parts before any subsample, whether any generation unites
    several batches or keeps one): what a points-mode generation holds at once."""
    kept: dict[str, int] = {}
    union, mixing = 0, False
    for t in range(1, generations + 1):
        comp = regime.compose(t)
        rows = sum(p.size if isinstance(p, Draw) else kept.get(p.name, 0) for p in comp.parts)
        mixing = mixing or len(comp.parts) > 1 or bool(comp.keep) or comp.subsample is not None
        for name, parts in comp.keep.items():
            kept[name] = sum(p.size if isinstance(p, Draw) else kept.get(p.name, 0) for p in parts)
        union = max(union, rows)
    return union, mixing


def training_sizes(regime: Regime, generations: int) -> tuple[int, int, int]:
    """(smallest training set, largest training set, largest kept total) over generations 1..T."""
    lo, hi, pool = math.inf, 0, 0
    for _, size, kept in iter_training_sizes(regime, generations):
        lo, hi, pool = min(lo, size), max(hi, size), max(pool, kept)
    return int(lo if lo != math.inf else 0), hi, pool


@dataclass
class ArmEstimate:
    arm: str
    mode: str
    event_size: int
    replicates: int
    generations: int
    peak_rows: int
    pool_rows: int
    state_floats: int | None
    n_metrics: int
    memory: int = 0
    disk: int = 0
    batch_bytes: int = 0
    table_bytes: int = 0  # the metrics records and long table held until the run ends


@dataclass
class Estimate:
    arms: list[ArmEstimate] = field(default_factory=list)
    keep_checkpoints: int = 2

    @property
    def memory(self) -> int:
        tables = sum(a.table_bytes for a in self.arms)
        return BASELINE + tables + max((a.memory for a in self.arms), default=0)

    @property
    def disk(self) -> int:
        return sum(a.disk for a in self.arms)

    def lines(self) -> list[str]:
        out = []
        for a in self.arms:
            state = "unknown" if a.state_floats is None else f"{a.state_floats:,} floats"
            out.append(
                f"arm '{a.arm}': {a.mode} mode, {a.replicates} replicates x {a.generations} "
                f"generations, {a.event_size} numbers per row, training set up to "
                f"{a.peak_rows:,} rows, kept pool up to {a.pool_rows:,} rows, model state {state}"
                f" per replicate -> working memory {human(a.memory)}, results table "
                f"{human(a.table_bytes)}, disk {human(a.disk)}"
            )
        out.append(
            f"total: peak memory {human(self.memory)} (arms run one at a time), disk "
            f"{human(self.disk)} (keeping {self.keep_checkpoints} checkpoints per arm)"
        )
        return out


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _event_size(cfg: Any) -> int:
    """Numbers per data row: ``event_size()`` on the data config where it has one (a regression
    row is x and y), else ``data.dim``, else one drawn row's size."""
    if hasattr(cfg.data, "event_size"):
        return int(cfg.data.event_size())
    dim = getattr(cfg.data, "dim", None)
    if isinstance(dim, int):
        return dim
    from madloop.data import build_source

    real = build_source(cfg.data, rng=np.random.default_rng(0))
    x = real.sample_points(1, replicates=1, rng=np.random.default_rng(0)).X
    return int(np.prod(x.shape[2:], dtype=np.int64))


def estimate_arm(arm: Any, *, keep_checkpoints: int = 2) -> ArmEstimate:
    from madloop.capabilities import exact_mode
    from madloop.config import make_regime
    from madloop.galleries import gallery_generations

    cfg = arm.config
    R, T = cfg.replicates, cfg.generations
    e = _event_size(cfg)
    regime = make_regime(cfg.loop)
    if regime.engine == "loop":
        _, peak, pool = training_sizes(regime, T)
        union, mixing = union_profile(regime, T)
    else:  # a regime with an engine of its own (web-pool): no per-chain recipe
        peak = pool = union = 0
        mixing = True
    exact = exact_mode(cfg.model, regime)
    state_size = getattr(cfg.model, "state_size", None)
    state = state_size(e) if callable(state_size) else None
    gaussian = cfg.data.source == "gaussian" and cfg.model.family == "gaussian"
    n_metrics = 5 if gaussian else DEFAULT_METRICS
    mode = "exact" if exact else "points"
    est = ArmEstimate(arm.name, mode, e, R, T, peak, pool, state, n_metrics)
    state_bytes = R * (state or 0) * FLOAT
    if exact:
        stats = R * (e * e + e + 1) * FLOAT
        est.batch_bytes = stats
        kept_bytes = stats * 2
        est.memory = STATE_COPIES * max(stats, state_bytes)
    else:
        est.batch_bytes = R * peak * e * FLOAT
        kept_bytes = R * pool * (e * FLOAT + 5)  # + source (int8) and origin (int32) tags
        copies = POINTS_COPIES if mixing else SINGLE_COPIES
        copies += getattr(cfg.model, "fit_batch_copies", 0)
        est.memory = copies * R * max(union, peak) * e * FLOAT + STATE_COPIES * state_bytes
        est.memory += 2 * kept_bytes if mixing else 0
        choices = getattr(getattr(cfg.loop, "curation", None), "choices", 1)  # the loop's
        if choices > 1:  # K candidates per synthetic point (the web pool curates otherwise)
            est.memory += CURATION_COPIES * R * choices * peak * (e + 2) * FLOAT
    est.table_bytes = T * R * n_metrics * TABLE_ROW
    records = T * (R * n_metrics * FLOAT + 2_000)  # per-generation records (npz)
    table = T * R * n_metrics * 12 + T * n_metrics * 150  # metrics.parquet + summary.csv
    checkpoints = (keep_checkpoints + 1) * (state_bytes + kept_bytes + 4_000 + T * 90)
    galleries = len(gallery_generations(T)) * 80_000
    plots = n_metrics * 80_000
    est.disk = records + table + checkpoints + galleries + plots
    return est


def estimate(arms: Sequence[Any], *, keep_checkpoints: int = 2) -> Estimate:
    arm_estimates = [estimate_arm(a, keep_checkpoints=keep_checkpoints) for a in arms]
    return Estimate(arm_estimates, keep_checkpoints)


# -- what the machine has -------------------------------------------------------------------------
def available_memory() -> int:
    """Bytes this process may still allocate: MemAvailable (or free pages), capped by a cgroup
    memory limit when one is set."""
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 2**62
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            avail = min(avail, int(limit) - used)
    except (OSError, ValueError):
        pass
    return int(avail)


def free_disk(path: Path) -> int:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def problems(est: Estimate, out: Path) -> list[str]:
    """Why the run would not fit on this machine (empty when it does)."""
    found = []
    mem, disk = available_memory(), free_disk(out)
    if est.memory > mem:
        a = max(est.arms, key=lambda x: x.memory)
        tables = sum(x.table_bytes for x in est.arms)
        if tables > a.memory:
            lower = (
                f"the metrics table has {tables // TABLE_ROW:,} rows: lower generations "
                f"({a.generations}) or replicates ({a.replicates}), or split the arms over runs"
            )
        elif a.mode == "points":
            lower = (
                f"lower replicates ({a.replicates}), the training set (up to {a.peak_rows:,} rows:"
                f" loop.synthetic_size / loop.real_size, or a non-accumulating regime) or the "
                f"data dimension ({a.event_size})"
            )
            if a.event_size > 0:
                lower += ", or use model.mode = 'exact' where the family has it"
        else:
            lower = f"lower replicates ({a.replicates}) or the data dimension ({a.event_size})"
        found.append(
            f"memory: the run needs about {human(est.memory)} (arm '{a.arm}') but "
            f"{human(mem)} is available; {lower}"
        )
    if est.disk > disk:
        a = max(est.arms, key=lambda x: x.disk)
        found.append(
            f"disk: the run writes about {human(est.disk)} but {human(disk)} is free under "
            f"{out}; lower generations ({a.generations}), replicates ({a.replicates}) or "
            "--keep-checkpoints, or choose another --out"
        )
    return found
