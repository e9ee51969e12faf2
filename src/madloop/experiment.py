"""Running an experiment: every arm of a validated config, its tables and its directory.

Configs, their validation and arms live in :mod:`madloop.config`; the tables in
:mod:`madloop.tables`; the directory layout in :mod:`madloop.storage`; closed forms in
:mod:`madloop.theory`. This module builds each arm's engine, runs it with checkpoints, and
assembles the :class:`RunResult`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from madloop.config import Arm, ConfigError, ExperimentConfig, make_regime, parse
from madloop.data import build_source
from madloop.loop import GenerationRecord, Loop
from madloop.models.base import build_model
from madloop.regimes import REGIMES
from madloop.storage import write_atomic, write_json, write_parquet
from madloop.storage.environment import git_commit, versions
from madloop.tables import long_table, provenance_table, summarize
from madloop.theory import predictions_frame

# -- running --------------------------------------------------------------------------------------
DATA_STREAM = 0  # the seed-tree branch for the real data's own randomness (e.g. a random Σ_0)


def build_loop(arm: Arm) -> Loop:
    cfg = arm.config
    real = real_source(cfg)
    model = build_model(cfg.model, replicates=cfg.replicates, real=real)
    return Loop(
        make_regime(cfg.loop),
        model,
        real,
        bias=cfg.sampling.bias,
        replicates=cfg.replicates,
        exact=getattr(cfg.model, "mode", "sample") == "exact",
        seed=cfg.seed,
        stream=arm.stream,
    )


GALLERY_SIZE = 256


def gallery_generations(generations: int) -> set[int]:
    """Generations that get a sample gallery: 1, the last, and a roughly log-spaced few."""
    marks = {2, 3, 5, 7, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000}
    return {1, generations} | {g for g in marks if g < generations}


def write_gallery(loop: Loop, out: Path, arm: str) -> list[Path]:
    """Samples of the current generation, rendered by the real source when it knows how
    (``render_samples(points, path_stem) -> list[Path]``; image grid, 2-D scatter, text...).
    Files land in ``plots/samples/{arm}_gen{t:03d}.*``."""
    render = getattr(loop.real, "render_samples", None)
    if render is None:
        return []
    stem = out / "plots" / "samples" / f"{arm}_gen{loop.generation:03d}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    return render(loop.gallery(GALLERY_SIZE), stem)


@dataclass
class RunResult:
    """The tables of a run. ``metrics``: long table (arm, generation, replicate, metric, value);
    ``summary``: per arm, generation and metric; ``provenance``: training-set make-up."""

    config: ExperimentConfig
    metrics: pd.DataFrame
    summary: pd.DataFrame
    provenance: pd.DataFrame
    manifest: dict[str, Any] = field(default_factory=dict)
    out: Path | None = None


def real_source(cfg: ExperimentConfig) -> Any:
    """An arm's real data, from its own branch of the seed tree (``DATA_STREAM``)."""
    seed = np.random.SeedSequence(cfg.seed, spawn_key=(DATA_STREAM,))
    return build_source(cfg.data, rng=np.random.default_rng(seed))


def theory_frame(arms: list[Arm]) -> pd.DataFrame:
    """Closed-form expectations per arm, generation and metric, from every registered predictor
    that applies (:mod:`madloop.theory`)."""
    frames = []
    plain = []
    for arm in arms:
        own = getattr(REGIMES[arm.config.loop.regime], "theory_frame", None)  # web-pool lineages
        if own is not None:
            frames.append(own(arm))
        else:
            cfg = arm.config
            plain.append((arm.name, cfg, lambda c=cfg: real_source(c), make_regime(cfg.loop)))
    frames.append(predictions_frame(plain))
    return pd.concat([f for f in frames if not f.empty] or frames[-1:], ignore_index=True)


Progress = Callable[[str, int, int], None]  # (arm, generation, generations)


Log = Callable[[str], None]


def run(
    config: Any,
    *,
    out: str | os.PathLike | None = None,
    seed: int | None = None,
    generations: int | None = None,
    replicates: int | None = None,
    progress: Progress | None = None,
    plots: bool = True,
    resume: bool | None = None,
    keep_checkpoints: int = 2,
    checkpoint_every: int = 1,
    log: Log | None = None,
) -> RunResult:
    """Run every arm of an experiment; return its tables, and write them to ``out`` if given.

    ``config`` is a TOML path, a dict or an :class:`ExperimentConfig`. With ``out``, each arm is
    checkpointed every ``checkpoint_every`` generations (and at its end) under
    ``out/checkpoints/`` (see :mod:`madloop.checkpoint`), keeping the newest ``keep_checkpoints``.
    ``resume=True`` continues each arm from its newest intact checkpoint (finished arms are not
    recomputed) and gives the numbers of an uninterrupted run, bit for bit; ``resume=False`` (what
    ``madloop run`` passes without ``--resume``) refuses a run directory that already holds
    checkpoints; ``None`` starts afresh, removing them. ``log`` receives notes (resumes,
    rejected checkpoints, stopped chains).
    """
    from madloop.checkpoint import run_has_checkpoints

    base, arms = parse(config, seed=seed, generations=generations, replicates=replicates)
    problems = []
    if keep_checkpoints < 1:
        problems.append(f"--keep-checkpoints: must be >= 1, got {keep_checkpoints}")
    if checkpoint_every < 1:
        problems.append(f"--checkpoint-every: must be >= 1, got {checkpoint_every}")
    if problems:
        raise ConfigError(problems)
    engine = next(
        (r for a in arms if (r := getattr(REGIMES[a.config.loop.regime], "run_experiment", None))),
        None,
    )
    log = log or (lambda msg: None)
    if engine is not None:  # a regime with its own engine (web-pool: lineages sharing a pool)
        if resume:
            log("this regime runs on its own engine, which is not checkpointed: running it whole")
        return engine(base, arms, out=out, progress=progress, plots=plots)
    started = time.time()
    out = Path(out) if out is not None else None
    if out is not None and resume is False and run_has_checkpoints(out):
        raise ConfigError(
            [
                f"--out: {out} already holds the checkpoints of a run; pass --resume to continue "
                "it, or give a new --out to start afresh"
            ]
        )
    with contextlib.ExitStack() as stack:
        if out is not None:
            from madloop.checkpoint import CheckpointError, RunLock

            try:
                stack.enter_context(RunLock(out))
            except CheckpointError as err:
                raise ConfigError([f"--out: {err}"]) from None
            if resume is None:  # a fresh run: old checkpoints must never mix with new ones
                shutil.rmtree(out / "checkpoints", ignore_errors=True)
        result = _run_arms(
            base, arms, out, started, resume, keep_checkpoints, checkpoint_every, progress, log
        )
        if out is not None:
            write_run(result, Path(out), plots=plots)
    return result


def _run_arms(
    base: ExperimentConfig,
    arms: list[Arm],
    out: Path | None,
    started: float,
    resume: bool | None,
    keep_checkpoints: int,
    checkpoint_every: int,
    progress: Progress | None,
    log: Log,
) -> RunResult:
    frames, prov, timings, modes, resumed, failures = [], [], {}, {}, {}, []
    for arm in arms:
        t0 = time.perf_counter()
        loop, records, start = _run_arm(
            arm, out, resume, keep_checkpoints, checkpoint_every, progress, log
        )
        modes[arm.name] = "exact" if loop.exact else "sample"
        if resume:
            resumed[arm.name] = start
        for r, (g, why) in sorted(loop.failed.items()):
            failures.append({"arm": arm.name, "generation": g, "replicate": r, "reason": why})
        frames.append(long_table(arm.name, records))
        prov.append(provenance_table(arm.name, records))
        timings[arm.name] = round(time.perf_counter() - t0, 4)
    extra: dict[str, Any] = {"failures": failures}
    if resume:
        extra["resumed_from"] = resumed
    return assemble_result(base, arms, frames, prov, modes, timings, started, extra)


def assemble_result(
    base: ExperimentConfig,
    arms: list[Arm],
    frames: list[pd.DataFrame],
    prov: list[pd.DataFrame],
    modes: dict[str, str],
    timings: dict[str, float],
    started: float,
    extra: dict[str, Any] | None = None,
) -> RunResult:
    """The run's tables and manifest from each arm's records (shared by every engine)."""
    metrics = pd.concat(frames, ignore_index=True)
    summary = summarize(metrics, theory_frame(arms))
    provenance = pd.concat(prov, ignore_index=True)
    manifest = {
        "name": base.name,
        "seed": base.seed,
        "config": {**base.to_dict()},
        "arms": {a.name: a.config.to_dict() for a in arms},
        "modes": modes,
        "versions": versions(),
        "git_commit": git_commit(),
        "command": " ".join(sys.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "timings_s": {"arms": timings, "total": round(time.time() - started, 4)},
        **(extra or {}),
    }
    return RunResult(base, metrics, summary, provenance, manifest)


def _run_arm(
    arm: Arm,
    out: Path | None,
    resume: bool | None,
    keep: int,
    every: int,
    progress: Progress | None,
    log: Log,
) -> tuple[Loop, list[GenerationRecord], int]:
    """One arm: restore it from its checkpoints if asked, run what is left, checkpoint it."""
    from madloop.checkpoint import ArmCheckpoints, CheckpointError

    loop = build_loop(arm)
    if out is not None and hasattr(loop.real, "cache_dir"):
        loop.real.cache_dir = out / "cache"  # e.g. the image metrics' feature network
    T = arm.config.generations
    records: list[GenerationRecord] = []
    ckpt = None
    if out is not None:
        ckpt = ArmCheckpoints(
            out / "checkpoints",
            arm.name,
            arm.config.to_dict(),
            keep=keep,
            log=log,
            extra={"versions": versions()},
        )
    if ckpt is not None and not hasattr(loop.model, "get_state"):
        log(
            f"arm '{arm.name}': family '{arm.config.model.family}' has no get_state(); "
            "not checkpointed"
        )
        ckpt = None
    if ckpt is not None and resume:
        try:
            restored = ckpt.restore(loop)
        except CheckpointError as err:
            raise ConfigError([f"--resume: {err}"]) from None
        if restored is not None:
            if restored.generation > T:
                raise ConfigError(
                    [
                        f"generations: arm '{arm.name}' is already at generation "
                        f"{restored.generation}; ask for >= {restored.generation} or use a new "
                        "--out"
                    ]
                )
            records = restored.records
            done = restored.generation >= T or loop.stopped is not None
            log(
                f"arm '{arm.name}': finished at generation {restored.generation}; not recomputed"
                if done
                else f"arm '{arm.name}': resuming after generation {restored.generation}"
            )
            if progress is not None:
                for rec in records:
                    progress(arm.name, rec.generation, T)
    start = loop.generation
    for rec in loop.run(T):
        records.append(rec)
        for r, why in rec.failures.items():
            log(f"arm '{arm.name}': chain {r} stopped at generation {rec.generation}: {why}")
        if out is not None and rec.generation in gallery_generations(T):
            if loop.stopped is None:
                write_gallery(loop, out, arm.name)
        if ckpt is not None:
            ckpt.save_record(rec)
            last = rec.generation >= T or loop.stopped is not None
            if last or rec.generation % every == 0:
                ckpt.save(loop, finished=last)
        if progress is not None:
            progress(arm.name, rec.generation, T)
    return loop, records, start


def write_run(result: RunResult, out: Path, *, plots: bool = True) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(result.metrics, out / "metrics.parquet")
    write_atomic(out / "summary.csv", result.summary.to_csv(index=False))
    write_atomic(out / "provenance.csv", result.provenance.to_csv(index=False))
    if plots:
        from madloop.report.plots import plot_metrics

        t0 = time.perf_counter()
        plot_metrics(result.summary, out / "plots")
        result.manifest["timings_s"]["plots"] = round(time.perf_counter() - t0, 4)
    write_json(out / "manifest.json", result.manifest)
    result.out = out
