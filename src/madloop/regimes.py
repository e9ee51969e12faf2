"""How a generation's training set is made: the regimes of self-consuming loops.

A regime is pure: for generation t it returns a :class:`Composition`, a recipe naming which
batches make the training set (new real points, new samples of generation t-1, batches kept from
earlier generations) and what to keep for later. The loop draws the batches, as points or as
Gaussian sufficient statistics, and the theory module takes the same recipe to compute expected
moments. So adding a regime is one small class, and it gets simulation and theory at once.

Generation 1 always trains on real data: "samples of generation 0" are draws from the real
distribution without bias.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from madloop.registry import Registry

SizeSpec = int | Sequence[int]


def size_at(spec: SizeSpec, generation: int) -> int:
    """The size for ``generation`` (1-based) from an int or a per-generation list whose last value
    repeats."""
    if isinstance(spec, int):
        return spec
    return int(spec[min(generation - 1, len(spec) - 1)])


@dataclass(eq=False, frozen=True)
class Draw:
    """A new batch of ``size`` points: ``real`` from the real distribution, ``synthetic`` from the
    model of the previous generation (sampled with the bias). Compared by identity, so the same
    Draw can be named in the training set and in what is kept."""

    source: Literal["real", "synthetic"]
    size: int


@dataclass(frozen=True)
class Kept:
    """The batches kept under ``name`` by an earlier generation."""

    name: str


Part = Draw | Kept


@dataclass(frozen=True)
class Composition:
    """The recipe of one generation's training set.

    ``parts`` are united; if ``subsample`` is set, a uniform subsample of that many rows without
    replacement is taken from the union (per replicate). ``keep`` names batches to keep for later
    generations (a name keeps its old value unless set again).
    """

    parts: tuple[Part, ...]
    keep: Mapping[str, tuple[Part, ...]] = field(default_factory=dict)
    subsample: int | None = None

    @property
    def needs_points(self) -> bool:
        """True when the recipe is not a function of the batches' sufficient statistics."""
        return self.subsample is not None


class Regime:
    """Base class. Subclasses set ``name`` and implement :meth:`compose`."""

    name: str = ""
    #: whether the Gaussian ``exact`` mode reproduces this regime's law
    exact: bool = True
    #: whether the regime draws real points after generation 1
    uses_real_size: bool = True
    #: what runs it (``madloop.experiment.ENGINES``): ``"loop"``, the single-chain
    #: :class:`madloop.loop.Loop` that calls :meth:`compose`, or an engine of its own
    engine: str = "loop"

    def __init__(
        self,
        *,
        real_size: SizeSpec = 0,
        synthetic_size: SizeSpec = 100,
        initial_real_size: int | None = None,
    ) -> None:
        self.real_size = real_size
        self.synthetic_size = synthetic_size
        self.initial_real_size = initial_real_size

    def n_real(self, generation: int) -> int:
        return size_at(self.real_size, generation)

    def n_synthetic(self, generation: int) -> int:
        return size_at(self.synthetic_size, generation)

    def n_initial(self) -> int:
        if self.initial_real_size is not None:
            return self.initial_real_size
        return self.n_real(1) + self.n_synthetic(1)

    def compose(self, generation: int) -> Composition:
        raise NotImplementedError

    def training_size(self, generation: int) -> int:
        """Rows in generation ``generation``'s training set (used by validation and theory)."""
        kept: dict[str, int] = {}
        size = 0
        for t in range(1, generation + 1):
            comp = self.compose(t)
            size = sum(_part_size(p, kept) for p in comp.parts)
            if comp.subsample is not None:
                size = min(size, comp.subsample)
            kept.update({k: sum(_part_size(p, kept) for p in v) for k, v in comp.keep.items()})
        return size


def _part_size(part: Part, kept: Mapping[str, int]) -> int:
    return part.size if isinstance(part, Draw) else kept[part.name]


class FullySynthetic(Regime):
    """Each generation trains only on n_s samples of the previous one (the seed's first loop)."""

    name = "fully-synthetic"
    uses_real_size = False

    def compose(self, generation: int) -> Composition:
        if generation == 1:
            return Composition((Draw("real", self.n_initial()),))
        return Composition((Draw("synthetic", self.n_synthetic(generation)),))


class SyntheticAugmentation(Regime):
    """One fixed real set of n_r points, drawn once, plus n_s samples of generation t-1."""

    name = "synthetic-augmentation"

    def compose(self, generation: int) -> Composition:
        if generation == 1:
            fixed = Draw("real", self.n_real(1))
            extra = Draw("real", self.n_initial() - fixed.size)
            return Composition((fixed, extra), keep={"fixed_real": (fixed,)})
        return Composition((Kept("fixed_real"), Draw("synthetic", self.n_synthetic(generation))))


class FreshData(Regime):
    """n_r new real points every generation plus n_s samples of generation t-1."""

    name = "fresh-data"

    def compose(self, generation: int) -> Composition:
        if generation == 1:
            return Composition((Draw("real", self.n_initial()),))
        return Composition(
            (Draw("real", self.n_real(generation)), Draw("synthetic", self.n_synthetic(generation)))
        )


class Accumulate(Regime):
    """Keep every earlier training point and add n_s new samples of generation t-1
    (Gerstgrasser et al. 2024): the training set grows."""

    name = "accumulate"

    def compose(self, generation: int) -> Composition:
        if generation == 1:
            first = Draw("real", self.n_initial())
            return Composition((first,), keep={"pool": (first,)})
        new = Draw("synthetic", self.n_synthetic(generation))
        return Composition((Kept("pool"), new), keep={"pool": (Kept("pool"), new)})


class AccumulateSubsample(Accumulate):
    """As accumulate, then a uniform subsample of n_r + n_s rows without replacement
    (Kazdan, Schaeffer et al.): the training size stays fixed while the pool grows."""

    name = "accumulate-subsample"
    exact = False  # a subsample is not a function of the pool's sufficient statistics

    def compose(self, generation: int) -> Composition:
        comp = super().compose(generation)
        if generation == 1:
            return comp
        target = self.n_real(generation) + self.n_synthetic(generation)
        return Composition(comp.parts, comp.keep, subsample=target)


#: the regimes, by name; the built-in plug-in modules (madloop.pool: web-pool) register more when
#: loaded, so this module never imports the engines above it
REGIMES: Registry[type[Regime]] = Registry("regime", builtins=("madloop.pool",))
for _cls in (FullySynthetic, SyntheticAugmentation, FreshData, Accumulate, AccumulateSubsample):
    REGIMES.register(_cls)
register_regime = REGIMES.register


def load_regimes() -> Registry[type[Regime]]:
    """Every regime, the built-in plug-ins' (web-pool) included."""
    return REGIMES.load()
