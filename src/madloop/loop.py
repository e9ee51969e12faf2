"""The self-consuming loop: per generation, compose the training set -> fit -> record metrics.

The loop knows no model's internals: it asks the regime for a recipe, draws each batch from the
real source or from the previous generation's model, unites them, fits, and evaluates the metric
suites. In ``exact`` mode the batches are Gaussian sufficient statistics instead of points.

Randomness: generation t of a chain uses a generator derived from ``SeedSequence(seed,
spawn_key=(stream, t))``, split into independent streams for drawing, fitting and measuring. So a
generation's numbers depend only on the seed, the stream (the arm) and t: the same on any executor
and after a resume, and adding a metric never changes a trajectory.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from madloop.capabilities import Checkpointable, exact_capable, satisfies
from madloop.metrics import evaluate
from madloop.models.base import FitFailed
from madloop.regimes import Draw, Kept, Regime
from madloop.state import (
    decode_batches,
    decode_failed,
    encode_batches,
    encode_failed,
    group,
    prefixed,
)
from madloop.types import REAL, SYNTHETIC, Points, Stats, weigh_sources

Batch = Points | Stats


@dataclass
class GenerationRecord:
    """What one generation produced for one label of an engine (an arm, or a pool lineage's
    ``"<arm>:<lineage>"``), for R replicate chains.

    ``provenance`` maps (source, origin generation, *extra) -> counts (R,), the extra key parts
    named by ``provenance_columns`` (the web pool adds ``published``: when a cohort entered it).
    """

    generation: int
    metrics: dict[str, np.ndarray]  # name -> (R,)
    provenance: dict[tuple[int, ...], np.ndarray]  # (source, origin generation, ...) -> (R,)
    train_size: np.ndarray  # (R,)
    failures: dict[int, str] = field(default_factory=dict)  # replicate -> why it stopped here
    arm: str = "base"
    provenance_columns: tuple[str, ...] = ()


@runtime_checkable
class Engine(Protocol):
    """What runs the generations of one arm: :class:`Loop`, or the web pool's lineages
    (:class:`madloop.pool.PoolLoop`). Experiments, checkpoints and resume see only this.

    A chain is one replicate of one label; a stopped chain reports NaN from its failure on and
    the others go on. ``get_state`` returns everything needed to resume after the current
    generation as arrays named ``group/key`` (each group becomes one ``.npz`` file), and
    ``set_state`` on a freshly built engine of the same config restores it bit for bit.
    """

    generation: int
    exact: bool
    real: Any  # the real source (its cache directory and renderer are set by the experiment)

    @property
    def labels(self) -> list[str]:
        """The arm labels its records carry, in reporting order."""
        ...

    @property
    def failed(self) -> Mapping[Any, tuple[int, str]]:
        """Stopped chains -> (generation, reason)."""
        ...

    @property
    def stopped(self) -> str | None:
        """Why every chain stopped, if they did (then :meth:`step` is not called again)."""
        ...

    @property
    def checkpointable(self) -> bool:
        """Whether :meth:`get_state` can be called (every model implements ``get_state``)."""
        ...

    def step(self) -> list[GenerationRecord]: ...

    def run(self, generations: int) -> Iterator[GenerationRecord]: ...

    def get_state(self) -> dict[str, np.ndarray]: ...

    def set_state(self, state: Mapping[str, np.ndarray]) -> None: ...

    def galleries(self, n: int) -> dict[str, Points]:
        """n samples per label whose chains still run, from their own seed streams."""
        ...


def generation_seed(seed: int, stream: int, generation: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(seed, spawn_key=(stream, generation))


DRAW, FIT, METRIC, GALLERY, SYNTHETIC_METRIC = range(5)  # the children of a generation's seed


def child_seed(seed: int, stream: int, generation: int, child: int) -> np.random.SeedSequence:
    """``generation_seed(seed, stream, generation).spawn(5)[child]``, built directly: a spawned
    child is the SeedSequence with the parent's spawn key plus its index, so this gives the same
    numbers without constructing the siblings a generation does not use."""
    return np.random.SeedSequence(seed, spawn_key=(stream, generation, child))


class Loop:
    """R replicate chains of one self-consuming loop.

    Parameters
    ----------
    regime : Regime
        How each generation's training set is composed.
    model : ChainModel
        R chains of a family (fitted anew each generation; a family may warm-start itself).
    real : RealSource
        Generation 0.
    bias : float
        Sampling bias used when drawing from a model (never for real data).
    replicates : int
    exact : bool
        Use sufficient statistics when the model, the source and the regime all support it.
    seed, stream : int
        Root seed and this chain's stream (the arm) in the seed tree.
    label : str
        The arm name its records carry.
    real_weight : float, optional
        The real rows' share of each training set's weight from generation 2 on
        (``loop.real_weight``; :func:`madloop.types.weigh_sources`). None: unweighted.
    synthetic : SyntheticDraw, optional
        How a synthetic batch is made when the config curates or corrects it
        (:mod:`madloop.synthetic`); then the arm runs on points.
    """

    def __init__(
        self,
        regime: Regime,
        model: Any,
        real: Any,
        *,
        bias: float = 1.0,
        replicates: int = 1,
        exact: bool = False,
        seed: int = 0,
        stream: int = 0,
        label: str = "base",
        real_weight: float | None = None,
        synthetic: Any = None,
        preprocess: Any = None,
    ) -> None:
        self.regime = regime
        self.real_weight = real_weight
        self.synthetic = synthetic
        self.model = model
        self.real = real
        self.bias = bias
        self.replicates = replicates
        self.seed = seed
        self.stream = stream
        self.exact = exact and synthetic is None and exact_capable(regime, model, real)
        self.generation = 0
        self.label = label
        self.kept: dict[str, Batch] = {}
        self.chains = Chains(replicates)
        self.preprocess = preprocess  # loop.preprocess (madloop.preprocess.Preprocessor) or None

    @property
    def labels(self) -> list[str]:
        return [self.label]

    @property
    def failed(self) -> dict[int, tuple[int, str]]:
        """replicate -> (generation, reason) for chains whose training diverged; they stop."""
        return self.chains.failed

    @property
    def stopped(self) -> str | None:
        return self.chains.stopped

    @property
    def checkpointable(self) -> bool:
        return satisfies(self.model, Checkpointable)

    # -- one generation -------------------------------------------------------------------------
    def step(self) -> list[GenerationRecord]:
        t = self.generation + 1
        draw_rng = np.random.default_rng(child_seed(self.seed, self.stream, t, DRAW))
        comp = self.regime.compose(t)
        drawn: dict[int, Batch] = {}
        weigh = self.real_weight is not None and t > 1  # generation 1 is real data only
        train = self._unite(comp.parts, drawn, draw_rng, t, weigh=weigh)
        if comp.subsample is not None and train.size > comp.subsample:
            train = _subsample(train, comp.subsample, draw_rng)
        for name, parts in comp.keep.items():
            self.kept[name] = self._unite(parts, drawn, draw_rng, t)
        removed: dict = {}
        if self.preprocess is not None:  # clip, dedup, standardise, align: before the fit
            train, removed = self.preprocess(train)

        raised: dict[int, str] = {}
        try:
            if self.exact:
                self.model.fit_stats(train)
            else:
                fit_rng = np.random.default_rng(child_seed(self.seed, self.stream, t, FIT))
                if self.preprocess is None:
                    self.model.fit_points(train, rng=fit_rng)
                else:
                    self.preprocess.fit(self.model, train, rng=fit_rng)
        except FitFailed as err:
            raised = fit_failures(err, self.replicates)
        if self.preprocess is not None:
            provenance, size = self.preprocess.provenance(train, removed)
        elif self.exact:
            provenance, size = train.provenance, train.count
        else:
            provenance = train.provenance_counts()
            size = np.full(train.replicates, train.size)
        self.generation = t
        failures = self.chains.settle(self.model, raised, t)

        def measure() -> dict[str, np.ndarray]:
            def metric_rng() -> np.random.Generator:  # built only if a suite draws
                return np.random.default_rng(child_seed(self.seed, self.stream, t, METRIC))

            out = evaluate(self.model, self.real, rng=metric_rng, generation=t, bias=self.bias)
            if self.synthetic is not None:  # e.g. mean_reward, from a stream of its own
                rng = np.random.default_rng(child_seed(self.seed, self.stream, t, SYNTHETIC_METRIC))
                out |= self.synthetic.metrics(self.model, self.real, bias=self.bias, rng=rng)
            if self.preprocess is not None:
                out |= self.preprocess.metrics(train, removed)
            return out

        metrics = self.chains.measure(measure)
        columns = () if self.preprocess is None else ("removed_by",)
        return [
            GenerationRecord(
                t, metrics, provenance, np.asarray(size), failures, self.label, columns
            )
        ]

    # -- resuming -------------------------------------------------------------------------------
    def get_state(self) -> dict[str, np.ndarray]:
        """Groups ``model`` (the family's ``get_state()``), ``kept``, ``source`` (the real
        source's state, when it has one) and ``loop`` (counters and stopped chains)."""
        state = prefixed("model", self.model.get_state())
        state |= prefixed("kept", encode_batches(self.kept))
        if hasattr(self.real, "get_state"):
            state |= prefixed("source", self.real.get_state())
        counters = {"generation": np.asarray(self.generation), **self.chains.get_state()}
        return state | prefixed("loop", counters)

    def set_state(self, state: Mapping[str, np.ndarray]) -> None:
        model = group(state, "model")
        if model:
            self.model.set_state(model)
        self.kept = decode_batches(group(state, "kept"))
        source = group(state, "source")
        if source and hasattr(self.real, "set_state"):
            self.real.set_state(source)
        counters = group(state, "loop")
        self.generation = int(counters["generation"])
        self.chains.set_state(counters)

    def galleries(self, n: int) -> dict[str, Points]:
        return {} if self.stopped is not None else {self.label: self.gallery(n)}

    def gallery(self, n: int) -> Points:
        """n samples of the current model for a gallery, from their own seed stream (drawing
        them never changes the trajectory)."""
        seed = child_seed(self.seed, self.stream, self.generation, GALLERY)
        points = self.model.sample_points(n, bias=self.bias, rng=np.random.default_rng(seed))
        points.source = np.full(points.X.shape[:2], SYNTHETIC, dtype=np.int8)
        points.origin = np.full(points.X.shape[:2], self.generation, dtype=np.int32)
        return points

    def run(self, generations: int) -> Iterator[GenerationRecord]:
        while self.generation < generations and self.stopped is None:
            yield from self.step()

    # -- composing ------------------------------------------------------------------------------
    def _unite(
        self,
        parts: tuple,
        drawn: dict[int, Batch],
        rng: np.random.Generator,
        t: int,
        *,
        weigh: bool = False,
    ) -> Batch:
        batches = []
        for part in parts:
            if isinstance(part, Kept):
                batches.append(self.kept[part.name])
            elif isinstance(part, Draw):
                if id(part) not in drawn:  # a Draw named twice (train and keep) is drawn once
                    drawn[id(part)] = self._draw(part, rng, t)
                batches.append(drawn[id(part)])
            else:
                raise TypeError(f"unknown part {part!r} in a composition")
        if weigh:  # the training set only: kept batches stay unweighted
            batches = weigh_sources(batches, self.real_weight)
        if self.exact:  # sufficient statistics merge by their own rule (Stats, Counts, ...)
            return type(batches[0]).merge(batches)
        return Points.concat(batches)

    def _draw(self, part: Draw, rng: np.random.Generator, t: int) -> Batch:
        R = self.replicates
        from_real = part.source == "real" or t == 1  # generation 0's "model" is the real law
        source, origin = (REAL, 0) if from_real else (SYNTHETIC, t - 1)
        if self.exact:
            if from_real:
                stats = self.real.sample_stats(part.size, replicates=R, rng=rng)
            else:
                stats = self.model.sample_stats(part.size, bias=self.bias, rng=rng)
            stats.provenance = {(source, origin): np.full(R, part.size)}
            return stats
        if from_real:
            points = self.real.sample_points(part.size, replicates=R, rng=rng)
        elif self.synthetic is not None:  # curated / corrected (madloop.synthetic)
            points = self.synthetic.draw(self.model, self.real, part.size, bias=self.bias, rng=rng)
        else:
            points = self.model.sample_points(part.size, bias=self.bias, rng=rng)
        points.source = np.full(points.X.shape[:2], source, dtype=np.int8)
        points.origin = np.full(points.X.shape[:2], origin, dtype=np.int32)
        return points


_REPLICATE_KEY = re.compile(r"^r(\d+)/(.*)$")


# -- stopped chains (every engine's one implementation) --------------------------------------------
def fit_failures(err: FitFailed, replicates: int) -> dict[int, str]:
    """replicate -> reason for the chains a :class:`FitFailed` names (all when it names none)."""
    chains = range(replicates) if err.replicates is None else err.replicates
    return {r: err.reason_for(r) for r in chains}


class Chains:
    """The R replicate chains of one model: which stopped, at which generation and why.

    A chain stops when its fit raises :class:`FitFailed` or leaves its fitted state non-finite;
    it reports NaN from then on while the others go on, and all stop when every chain has.
    """

    def __init__(self, replicates: int) -> None:
        self.replicates = replicates
        self.failed: dict[int, tuple[int, str]] = {}
        self.stopped: str | None = None
        self.metric_names: list[str] = []  # what a generation reports, for the NaN of a stop

    def settle(self, model: Any, raised: Mapping[int, str], generation: int) -> dict[int, str]:
        """After generation ``generation``'s fit: the chains that stopped there -> reason."""
        failures = dict(raised)
        failures.update(check_state(model, self.replicates, set(self.failed) | set(raised)))
        failures = {r: why for r, why in sorted(failures.items()) if r not in self.failed}
        for r, why in failures.items():
            self.failed[r] = (generation, why)
        if len(self.failed) == self.replicates:
            self.stopped = f"every chain stopped (last at generation {generation})"
        return failures

    def measure(self, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """``compute()``'s metrics with the stopped chains' entries NaN (all NaN, without calling
        it, once every chain stopped)."""
        if self.stopped is not None:
            nan = np.full(self.replicates, np.nan)
            return {name: nan.copy() for name in self.metric_names}
        metrics = compute()
        self.metric_names = list(metrics)
        if self.failed:  # a stopped chain reports NaN from its failure on
            dead = sorted(self.failed)
            metrics = {k: _masked(v, dead) for k, v in metrics.items()}
        return metrics

    def get_state(self) -> dict[str, np.ndarray]:
        names = {"metric_names": np.asarray(self.metric_names, dtype=str)}
        return {**encode_failed(self.failed, self.stopped), **names}

    def set_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.failed, self.stopped = decode_failed(arrays)
        self.metric_names = [str(n) for n in arrays["metric_names"]]


def check_state(model: Any, replicates: int, dead: set[int]) -> dict[int, str]:
    """Chains whose fitted state is not finite, and keep failed chains computable.

    The state layout follows the checkpoint contract: arrays with a leading replicate axis R
    (vectorised families) or keys ``r{i}/...`` (:class:`PerReplicate`) belong to one chain; any
    other array belongs to all of them. A failed chain's arrays (``dead``, or found here) are
    overwritten with a healthy chain's, so the batch stays finite for the others' sake (its own
    numbers are masked as NaN from then on); a non-finite shared array stops every chain.
    """
    R = replicates
    if not hasattr(model, "get_state"):  # outside the checkpoint contract: only FitFailed
        return {}
    state = model.get_state()
    bad: dict[int, str] = {}
    for key, arr in state.items():
        arr = np.asarray(arr)
        # only floats and complex numbers can be non-finite (a dtype kind test: np.issubdtype
        # costs about as much as the check of a small array)
        if arr.dtype.kind not in "fc" or np.isfinite(arr).all():
            continue
        r = _replicate_of(key, arr, R)
        if r is None:
            why = f"non-finite fitted state '{key}' (shared by all chains)"
            return dict.fromkeys(range(R), why)
        for i in r:
            bad.setdefault(i, f"non-finite fitted state '{key}'")
    dead = set(dead) | set(bad)
    if dead:  # patch the failed chains from the first healthy one, if any is left
        donor = next((i for i in range(R) if i not in dead), None)
        if donor is not None:
            model.set_state(_patched(state, R, sorted(dead), donor))
    return bad


def _replicate_of(key: str, arr: np.ndarray, R: int) -> list[int] | None:
    """Replicates whose entries of ``arr`` are not finite; None when the array is shared."""
    m = _REPLICATE_KEY.match(key)
    if m:
        return [int(m[1])]
    if arr.ndim >= 1 and arr.shape[0] == R:
        finite = np.isfinite(arr.reshape(R, -1)).all(axis=1)
        return [int(i) for i in np.flatnonzero(~finite)]
    return None


def _patched(state: dict[str, np.ndarray], R: int, dead: list[int], donor: int) -> dict:
    out = {}
    for key, arr in state.items():
        m = _REPLICATE_KEY.match(key)
        if m:
            donor_key = f"r{donor}/{m[2]}"
            out[key] = state[donor_key] if int(m[1]) in dead and donor_key in state else arr
        elif np.ndim(arr) >= 1 and np.shape(arr)[0] == R:
            arr = np.array(arr, copy=True)
            arr[dead] = arr[donor]
            out[key] = arr
        else:
            out[key] = arr
    return out


def _masked(values: np.ndarray, dead: list[int]) -> np.ndarray:
    values = np.array(values, dtype=float, copy=True)
    if values.ndim == 1:
        values[[r for r in dead if r < values.size]] = np.nan
    return values


def _subsample(points: Points, k: int, rng: np.random.Generator) -> Points:
    """A uniform subsample of k rows without replacement, independently per replicate."""
    keys = rng.random((points.replicates, points.size))
    index = np.argpartition(keys, k - 1, axis=1)[:, :k]
    return points.take(index)
