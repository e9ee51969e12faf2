"""The web pool's engine: :class:`PoolLoop` runs an arm's lineages, one generation at a time, as
a :class:`madloop.loop.Engine` (records per lineage, state for checkpoints, galleries)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from madloop.capabilities import Moments, SufficientStatistics, exact_requested, satisfies
from madloop.config import Arm, ConfigError
from madloop.engines import real_source, register_engine
from madloop.loop import Chains, GenerationRecord, fit_failures
from madloop.metrics import evaluate
from madloop.models.base import FitFailed, build_model
from madloop.pool.curation import SCORERS, top_k
from madloop.pool.regime import LineageSpec, WebPool, schedule_problems
from madloop.state import decode_batches, encode_batches, group, prefixed
from madloop.theory.pool import REAL_SOURCE, Cohort, apportion
from madloop.types import Points, Stats


@dataclass
class Lineage:
    spec: LineageSpec
    model: Any
    make_model: Callable[[], Any]


@dataclass
class PoolRecord(GenerationRecord):
    """One lineage's generation. Its provenance is keyed (source, origin generation, published
    generation): source 0 real, 1 + k lineage k; ``published`` is when the cohort entered."""

    @property
    def counts(self) -> dict[tuple[int, int], np.ndarray]:
        """Kept counts (R,) per cohort, {(source, published generation): counts}."""
        return {(key[0], key[-1]): v for key, v in self.provenance.items()}


def _snapshot(lin: Lineage) -> Any:
    """A frozen copy of a lineage's current model, rebuilt from its checkpoint arrays (copied, so
    a warm-started family that trains in place cannot change published content)."""
    model = lin.make_model()
    model.set_state({k: np.array(v, copy=True) for k, v in lin.model.get_state().items()})
    return model


def draw_stats_counts(
    mean: np.ndarray,
    factor: np.ndarray,
    counts: np.ndarray,
    rng: np.random.Generator,
    *,
    scale: float = 1.0,
) -> Stats:
    """Sufficient statistics of counts[r] draws from N(mean[r], scale · L L^T), one count per
    replicate (0 and 1 allowed): x̄ ~ N(mean, scale Σ/m), S ~ Wishart(scale Σ, m - 1) by Bartlett
    with a per-replicate degree of freedom. Random numbers drawn do not depend on the counts."""
    R, d = mean.shape
    m = np.asarray(counts, dtype=np.int64)
    z = rng.standard_normal((R, d))
    root = np.sqrt(scale)
    with np.errstate(divide="ignore", invalid="ignore"):
        step = np.where(m > 0, root / np.sqrt(np.maximum(m, 1)), 0.0)
    xbar = mean + step[:, None] * np.einsum("rij,rj->ri", factor, z)
    dof = m - 1
    i = np.arange(d)
    chi = rng.chisquare(np.maximum(dof[:, None] - i[None, :], 1), size=(R, d))
    A = np.zeros((R, d, d))
    A[:, i, i] = np.where(dof[:, None] - i[None, :] >= 1, np.sqrt(chi), 0.0)
    rows, cols = np.tril_indices(d, -1)
    normals = rng.standard_normal((R, rows.size))
    A[:, rows, cols] = np.where(cols[None, :] < dof[:, None], normals, 0.0)
    return Stats(m, xbar, root * (factor @ A))


def merge_stats(parts: list[Stats]) -> Stats:
    """Union of batches in one QR (zero counts allowed): S = Σ S_c + Σ m_c (x̄_c - x̄)(x̄_c - x̄)^T."""
    counts = np.stack([p.count for p in parts], axis=1).astype(float)  # (R, C)
    means = np.stack([p.mean for p in parts], axis=1)  # (R, C, d)
    total = counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.einsum("rc,rcd->rd", counts, means) / np.where(total > 0, total, 1.0)[:, None]
    dev = np.sqrt(counts)[:, :, None] * np.where(counts[:, :, None] > 0, means - mean[:, None], 0)
    stacked = np.concatenate([np.swapaxes(p.factor, 1, 2) for p in parts] + [dev], axis=1)
    r = np.linalg.qr(stacked, mode="r")
    factor = np.swapaxes(r, 1, 2)
    # QR may flip signs of rows: a factor is defined up to them, keep the diagonal non-negative
    sign = np.where(np.diagonal(factor, axis1=1, axis2=2) < 0, -1.0, 1.0)
    prov: dict[tuple[int, int], np.ndarray] = {}
    for p in parts:
        for k, v in p.provenance.items():
            prov[k] = prov.get(k, 0) + v
    return Stats(total.astype(np.int64), mean, factor * sign[:, None, :], prov)


def splice_state(
    new: dict[str, np.ndarray], old: dict[str, np.ndarray], keep_old: np.ndarray
) -> dict[str, np.ndarray]:
    """Per replicate, the old state where ``keep_old``: arrays with a leading replicate axis, or
    keys prefixed ``r{i}/`` (:class:`madloop.models.base.PerReplicate`)."""
    R = keep_old.size
    out = {}
    for key, value in new.items():
        m = re.match(r"r(\d+)/", key)
        if m:
            out[key] = old[key] if keep_old[int(m.group(1))] else value
        elif np.ndim(value) >= 1 and np.shape(value)[0] == R:
            mask = keep_old.reshape((R,) + (1,) * (np.ndim(value) - 1))
            out[key] = np.where(mask, old[key], value)
        else:
            raise ValueError(f"cannot keep the previous model per replicate for state {key!r}")
    return out


class PoolLoop:
    """R replicate chains of K lineages sharing one web-scale pool (see the module docstring).

    Seeds: lineage k's generation t uses ``SeedSequence(seed, spawn_key=(stream, t, key_k))``
    with key_k a hash of its name, split into counts, items, fit, metrics and gallery streams.
    """

    def __init__(
        self,
        regime: WebPool,
        lineages: list[Lineage],
        real: Any,
        *,
        replicates: int = 1,
        exact: bool = False,
        seed: int = 0,
        stream: int = 0,
        arm: str = "base",
    ) -> None:
        self.regime = regime
        self.arm = arm
        self.cfg = regime.cfg
        self.lineages = lineages
        self.real = real
        self.replicates = replicates
        self.seed = seed
        self.stream = stream
        self.schedule = regime.schedule()
        self.detector = regime.detector()
        self.curate = self.cfg.curation.keep < 1.0
        self.exact = exact and not self.curate and self.exact_supported(lineages, real)
        if not self.cfg.refill and not self.exact:
            raise ConfigError(
                [
                    "loop.refill: false needs exact mode, which these lineages cannot run "
                    "(every family needs fit_stats and moments); set loop.refill = true"
                ]
            )
        self.scorer = SCORERS[self.cfg.curation.score] if self.curate else None
        if self.scorer is not None:
            for lin in lineages:
                why = self.scorer.problem(lin.model, real)
                if why:
                    raise ConfigError([f"loop.curation.score: {why}"])
        self.generation = 0
        self.samplers: dict[tuple[int, int], Any] = {}  # (lineage index, generation) -> model
        self.last_train: dict[str, tuple[Points | Stats, np.ndarray | None]] = {}
        self.chains = {lin.spec.name: Chains(replicates) for lin in lineages}

    @staticmethod
    def exact_supported(lineages: list[Lineage], real: Any) -> bool:
        """Exact draws come from each cohort's moments (the real law's too), fits from the
        sufficient statistics of the merged scrape."""
        return satisfies(real, Moments) and all(
            satisfies(lin.model, SufficientStatistics) and satisfies(lin.model, Moments)
            for lin in lineages
        )

    # -- the Engine protocol -------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        K = len(self.lineages)
        return [lineage_arm(self.arm, lin.spec.name, K) for lin in self.lineages]

    @property
    def source_names(self) -> dict[int, str]:
        """Provenance source codes -> names: real, and each lineage's content."""
        names = {REAL_SOURCE: "real"}
        return names | {1 + lin.spec.index: f"lineage:{lin.spec.name}" for lin in self.lineages}

    @property
    def failed(self) -> dict[tuple[str, int], tuple[int, str]]:
        """(label, replicate) -> (generation, reason) for the chains that stopped."""
        return {
            (label, r): stop
            for label, lin in zip(self.labels, self.lineages, strict=True)
            for r, stop in sorted(self.chains[lin.spec.name].failed.items())
        }

    @property
    def stopped(self) -> str | None:
        whys = [c.stopped for c in self.chains.values()]
        return None if None in whys else f"every chain of every lineage stopped ({whys[-1]})"

    @property
    def checkpointable(self) -> bool:
        return all(hasattr(lin.model, "get_state") for lin in self.lineages)

    def run(self, generations: int) -> Iterator[PoolRecord]:
        while self.generation < generations and self.stopped is None:
            yield from self.step()

    def step(self) -> list[PoolRecord]:
        """Every lineage's next generation; a lineage whose chains all stopped reports no more
        records (its last model stays in the pool)."""
        t = self.generation + 1
        if t >= 2:  # publish: every lineage's generation t - 1 enters the pool
            for lin in self.lineages:
                if any(c.source == 1 + lin.spec.index for c in self.schedule.published(t)):
                    self.samplers[(lin.spec.index, t - 1)] = _snapshot(lin)
            self._forget(t)
        records = [
            self._train(lin, label, t)
            for lin, label in zip(self.lineages, self.labels, strict=True)
            if self.chains[lin.spec.name].stopped is None
        ]
        self.generation = t
        return records

    def galleries(self, n: int) -> dict[str, Points]:
        return {
            label: self.gallery(lin, n)
            for lin, label in zip(self.lineages, self.labels, strict=True)
            if self.chains[lin.spec.name].stopped is None
        }

    def _forget(self, t: int) -> None:
        """Drop the models whose content no future scrape can reach."""
        if self.cfg.max_age is None:
            return
        max_lag = max(lin.spec.lag for lin in self.lineages)
        oldest = t - max_lag - self.cfg.max_age + 1  # earliest publication still reachable
        for key in [k for k in self.samplers if k[1] + 1 < oldest]:
            del self.samplers[key]

    # -- one lineage's generation --------------------------------------------------------------
    def _seeds(self, lin: Lineage, t: int) -> list[np.random.Generator]:
        ss = np.random.SeedSequence(self.seed, spawn_key=(self.stream, t, lin.spec.key))
        return [np.random.default_rng(s) for s in ss.spawn(5)]

    def _counts(
        self, lin: Lineage, t: int, rng: np.random.Generator
    ) -> tuple[list[Cohort], np.ndarray]:
        """The cohorts reached and the items kept from each, (R, C), before curation."""
        R, n = self.replicates, lin.spec.scrape_size
        if t == 1:
            return [Cohort(REAL_SOURCE, 1, self.cfg.initial_real)], np.full((R, 1), n)
        cohorts = self.schedule.reachable(t, lin.spec.lag)
        amounts = np.array([c.amount for c in cohorts])
        q = self.detector.keep_probabilities([c.source for c in cohorts])
        pi = amounts / amounts.sum()
        if self.cfg.refill:
            size = math.ceil(n / self.cfg.curation.keep) if self.curate else n
            w = pi * q
            if self.cfg.scrape == "proportional":
                return cohorts, np.broadcast_to(apportion(size, w), (R, len(cohorts))).copy()
            return cohorts, rng.multinomial(size, w / w.sum(), size=R)
        if self.cfg.scrape == "proportional":
            kept = np.floor(apportion(n, pi) * q + 0.5).astype(np.int64)
            return cohorts, np.broadcast_to(kept, (R, len(cohorts))).copy()
        return cohorts, self.detector.thin(
            rng.multinomial(n, pi, size=R), [c.source for c in cohorts], rng
        )

    def _groups(self, cohorts: list[Cohort]) -> list[tuple[Any, float, int, int, list[int]]]:
        """Cohorts by the model that made them: (model or None for real, bias, source, origin,
        cohort positions), in a fixed order."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i, c in enumerate(cohorts):
            groups.setdefault((c.source, c.origin), []).append(i)
        out = []
        for (source, origin), idx in groups.items():
            if source == REAL_SOURCE:
                out.append((None, 1.0, source, origin, idx))
            else:
                lin = self.lineages[source - 1]
                out.append(
                    (self.samplers[(source - 1, origin)], lin.spec.bias, source, origin, idx)
                )
        return out

    def _train(self, lin: Lineage, label: str, t: int) -> PoolRecord:
        count_rng, draw_rng, fit_rng, metric_rng, _ = self._seeds(lin, t)
        cohorts, counts = self._counts(lin, t, count_rng)
        chains = self.chains[lin.spec.name]
        if self.exact:
            train = self._draw_stats(cohorts, counts, draw_rng)
            kept, size = counts, train.count
            self.last_train[lin.spec.name] = (train, None)
        else:
            train, kept, size = self._scrape_points(lin, t, cohorts, counts, draw_rng)
        raised: dict[int, str] = {}
        try:
            if self.exact:
                self._fit_stats(lin, t, train)
            else:
                lin.model.fit_points(train, rng=fit_rng)
        except FitFailed as err:
            raised = fit_failures(err, self.replicates)
        failures = chains.settle(lin.model, raised, t)

        def measure() -> dict[str, np.ndarray]:
            # measured with the lineage's own bias, as the single-chain loop does
            metrics = evaluate(
                lin.model, self.real, rng=metric_rng, generation=t, bias=lin.spec.bias
            )
            real_cols = [i for i, c in enumerate(cohorts) if c.source == REAL_SOURCE]
            total = kept.sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                metrics["synthetic_share"] = np.where(
                    total > 0, 1.0 - kept[:, real_cols].sum(axis=1) / np.maximum(total, 1), np.nan
                )
            if not self.cfg.refill:
                metrics["train_size"] = np.asarray(total, dtype=float)
            return metrics

        metrics = chains.measure(measure)
        prov = {(c.source, c.origin, c.published): kept[:, i] for i, c in enumerate(cohorts)}
        return PoolRecord(
            t, metrics, prov, np.asarray(size), failures, label, provenance_columns=("published",)
        )

    def _fit_stats(self, lin: Lineage, t: int, train: Stats) -> None:
        """Fit on sufficient statistics; a replicate left with fewer than ``min_train_size``
        items keeps its model."""
        fit_ok = train.count >= self.cfg.min_train_size
        previous = None if fit_ok.all() or t == 1 else lin.model.get_state()
        with np.errstate(divide="ignore", invalid="ignore"):
            lin.model.fit_stats(train)
        if previous is not None:
            lin.model.set_state(splice_state(lin.model.get_state(), previous, ~fit_ok))

    def _scrape_points(
        self,
        lin: Lineage,
        t: int,
        cohorts: list[Cohort],
        counts: np.ndarray,
        rng: np.random.Generator,
    ) -> tuple[Points, np.ndarray, np.ndarray]:
        """The items (curated when asked), their kept counts per cohort (R, C) and sizes (R,)."""
        points, cid = self._draw_points(cohorts, counts, rng)
        if self.curate and t >= 2:
            scores = self.scorer.score(lin.model, self.real, points)
            best = top_k(scores, lin.spec.scrape_size, rng)
            points, cid = points.take(best), np.take_along_axis(cid, best, axis=1)
        kept = np.stack([(cid == i).sum(axis=1) for i in range(len(cohorts))], axis=1)
        published = np.array([c.published for c in cohorts])[cid]
        self.last_train[lin.spec.name] = (points, published)
        return points, kept, np.full(self.replicates, points.size)

    def _draw_stats(
        self, cohorts: list[Cohort], counts: np.ndarray, rng: np.random.Generator
    ) -> Stats:
        R = self.replicates
        parts = []
        for model, bias, _source, _origin, idx in self._groups(cohorts):
            if model is None:
                mean0, factor0 = self.real.moments()
                mean = np.broadcast_to(mean0, (R,) + mean0.shape)
                factor = np.broadcast_to(factor0, (R,) + factor0.shape)
            else:
                mean, factor = model.moments()
            stats = draw_stats_counts(mean, factor, counts[:, idx].sum(axis=1), rng, scale=bias)
            stats.provenance = {}
            for i in idx:
                key = (cohorts[i].source, cohorts[i].origin)
                stats.provenance[key] = stats.provenance.get(key, 0) + counts[:, i]
            parts.append(stats)
        return merge_stats(parts)

    def _draw_points(
        self, cohorts: list[Cohort], counts: np.ndarray, rng: np.random.Generator
    ) -> tuple[Points, np.ndarray]:
        """The items, (R, size) with their cohort index per row, rows shuffled per replicate."""
        R = self.replicates
        batches, ids = [], []
        for model, bias, source, origin, idx in self._groups(cohorts):
            c = counts[:, idx]  # (R, Cg)
            top = int(c.sum(axis=1).max())
            if top == 0:
                continue
            if model is None:
                pts = self.real.sample_points(top, replicates=R, rng=rng)
            else:
                pts = model.sample_points(top, bias=bias, rng=rng)
            pts.source = np.full((R, top), source, dtype=np.int8)
            pts.origin = np.full((R, top), origin, dtype=np.int32)
            # row j of replicate r belongs to the cohort whose cumulative count first exceeds j
            ends = np.cumsum(c, axis=1)  # (R, Cg)
            j = np.arange(top)
            which = (j[None, None, :] >= ends[:, :, None]).sum(axis=1)  # (R, top)
            valid = j[None, :] < ends[:, -1:]
            ids.append(np.where(valid, np.asarray(idx)[np.minimum(which, len(idx) - 1)], -1))
            batches.append(pts)
        points = Points.concat(batches)
        cid = np.concatenate(ids, axis=1)
        size = int((cid[0] >= 0).sum())
        rows = np.nonzero(cid >= 0)[1].reshape(R, size)
        rows = rng.permuted(rows, axis=1)
        return points.take(rows), np.take_along_axis(cid, rows, axis=1)

    # -- resuming -------------------------------------------------------------------------------
    def get_state(self) -> dict[str, np.ndarray]:
        """Groups ``pool`` (counters, stopped chains per lineage), ``lineages`` (each live
        model), ``samplers`` (the published snapshots, keyed (lineage, generation)), ``train``
        (each lineage's last training set) and ``source`` (the real source's, if it has one)."""
        pool = {"generation": np.asarray(self.generation)}
        keys = sorted(self.samplers)
        pool["sampler_keys"] = np.asarray(keys, dtype=np.int64).reshape(len(keys), 2)
        state: dict[str, np.ndarray] = {}
        for lin in self.lineages:
            k = lin.spec.index
            pool |= prefixed(str(k), self.chains[lin.spec.name].get_state())
            state |= prefixed(f"lineages/{k}", lin.model.get_state())
        for k, g in keys:
            state |= prefixed(f"samplers/{k}.{g}", self.samplers[(k, g)].get_state())
        trains = {name: train for name, (train, _) in self.last_train.items()}
        published = {n: p for n, (_, p) in self.last_train.items() if p is not None}
        state |= prefixed("train", encode_batches(trains))
        state |= prefixed("published", published)
        if hasattr(self.real, "get_state"):
            state |= prefixed("source", self.real.get_state())
        return state | prefixed("pool", pool)

    def set_state(self, state: Mapping[str, np.ndarray]) -> None:
        pool = group(state, "pool")
        self.generation = int(pool["generation"])
        for lin in self.lineages:
            k = lin.spec.index
            self.chains[lin.spec.name].set_state(group(pool, str(k)))
            model = group(state, f"lineages/{k}")
            if model:
                lin.model.set_state(model)
        self.samplers = {}
        for k, g in (tuple(int(x) for x in key) for key in pool["sampler_keys"]):
            sampler = self.lineages[k].make_model()
            sampler.set_state(group(state, f"samplers/{k}.{g}"))  # as a snapshot is made
            self.samplers[(k, g)] = sampler
        trains = decode_batches(group(state, "train"))
        published = group(state, "published")
        self.last_train = {n: (train, published.get(n)) for n, train in trains.items()}
        source = group(state, "source")
        if source and hasattr(self.real, "set_state"):
            self.real.set_state(source)

    def gallery(self, lin: Lineage, n: int) -> Points:
        seed = self._seeds(lin, self.generation)[4]
        points = lin.model.sample_points(n, bias=lin.spec.bias, rng=seed)
        points.source = np.full(points.X.shape[:2], 1 + lin.spec.index, dtype=np.int8)
        points.origin = np.full(points.X.shape[:2], self.generation, dtype=np.int32)
        return points


def is_pool(arm: Arm) -> bool:
    return arm.config.loop.regime == WebPool.name


def lineage_arm(arm: str, lineage: str, k: int) -> str:
    return arm if k == 1 else f"{arm}:{lineage}"


def build_pool(arm: Arm) -> PoolLoop:
    cfg = arm.config
    regime = WebPool(**cfg.loop.model_dump())
    real = real_source(cfg)
    specs = regime.resolve(cfg.model, cfg.sampling.bias)
    problems = schedule_problems(regime, specs, cfg.generations)
    if problems:
        raise ConfigError([f"arms[{arm.name}]: {p}" if arm.name != "base" else p for p in problems])
    lineages = []
    for spec in specs:

        def make(spec: LineageSpec = spec) -> Any:
            return build_model(spec.model, replicates=cfg.replicates, real=real)

        lineages.append(Lineage(spec, make(), make))
    exact = all(exact_requested(s.model) for s in specs)
    return PoolLoop(
        regime,
        lineages,
        real,
        replicates=cfg.replicates,
        exact=exact,
        seed=cfg.seed,
        stream=arm.stream,
        arm=arm.name,
    )


register_engine(WebPool.engine, build_pool)
