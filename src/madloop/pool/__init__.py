"""The internet pool (``loop.regime = "web-pool"``): several model lineages publish into and scrape
from one pool of documents whose share of generated content grows.

**The pool.** Content enters in *cohorts*: the real content before generation 1
(``initial_real``), then at each generation t >= 2 ``new_content`` units, a share a_t of them
generated (the adoption schedule) and split among the lineages by their ``weight``; lineage k's
cohort of generation t was sampled (with its bias) from its generation t - 1. A cohort stays
reachable for ``max_age`` generations (all of them when unset). The pool is web-scale: a scrape
is a small random sample of it, so two scrapes never share a document and the items a scrape
takes from a cohort are fresh draws from the model that made it. The amounts are therefore rates:
only their ratios matter.

**A lineage's generation t.** Its scrape sees the pool as it was ``lag`` generations earlier
(a knowledge cutoff): n = ``scrape_size`` items, each from cohort c with probability proportional
to its amount (``scrape = "random"``; ``"proportional"`` takes the expected counts). A detector
drops flagged items (:mod:`madloop.pool.detectors`); with ``refill`` (default) the lab scrapes
until n items pass, otherwise it trains on what is left (binomial thinning; ``exact`` mode only,
and a lineage left with fewer than ``min_train_size`` items keeps its model). Curation
(:mod:`madloop.pool.curation`, ``sample`` mode) scrapes n / keep candidates that pass the
detector and keeps the n its current model rates highest. Generation 1 trains on n real items,
as every loop.

Counts come first and items second, from the cohorts' models: the Gaussian ``exact`` mode draws
sufficient statistics for each count, ``sample`` mode draws the points, and both modes use the same
counts for the same seed. Each lineage's metrics are reported under the arm name
``"<arm>:<lineage>"`` (just ``"<arm>"`` when there is one lineage), with ``synthetic_share`` (the
share of generated items in its training set) next to the family's metrics; the Gaussian theory
of :mod:`madloop.theory.pool` gives the ``theory`` column.

Modules: :mod:`~madloop.pool.config` (the [loop] table), :mod:`~madloop.pool.schedule` (cohorts
and adoption), :mod:`~madloop.pool.regime` (lineages resolved against the arm),
:mod:`~madloop.pool.detectors`, :mod:`~madloop.pool.curation`, :mod:`~madloop.pool.engine`
(:class:`PoolLoop`, a :class:`madloop.loop.Engine`) and :mod:`~madloop.pool.theory`.
"""

from madloop.pool.config import (
    AdoptionSpec,
    ConstantAdoption,
    CurationConfig,
    DetectorConfig,
    LineageConfig,
    LinearAdoption,
    LogisticAdoption,
    WebPoolConfig,
)
from madloop.pool.curation import SCORERS, register_scorer
from madloop.pool.detectors import Detector, watermarked_lineages
from madloop.pool.engine import (
    Lineage,
    PoolLoop,
    PoolRecord,
    build_pool,
    draw_stats_counts,
    is_pool,
    lineage_arm,
    merge_stats,
    real_source,
)
from madloop.pool.regime import LineageSpec, WebPool, schedule_problems
from madloop.pool.schedule import PoolSchedule, adoption_at
from madloop.pool.theory import PoolTheory, phase_boundary, pool_theory, pool_theory_frame

__all__ = [
    "SCORERS",
    "AdoptionSpec",
    "ConstantAdoption",
    "CurationConfig",
    "Detector",
    "DetectorConfig",
    "Lineage",
    "LineageConfig",
    "LineageSpec",
    "LinearAdoption",
    "LogisticAdoption",
    "PoolLoop",
    "PoolRecord",
    "PoolSchedule",
    "PoolTheory",
    "WebPool",
    "WebPoolConfig",
    "adoption_at",
    "build_pool",
    "draw_stats_counts",
    "is_pool",
    "lineage_arm",
    "merge_stats",
    "phase_boundary",
    "pool_theory",
    "pool_theory_frame",
    "real_source",
    "register_scorer",
    "schedule_problems",
    "watermarked_lineages",
]
