"""Closed-form theory: one package, one registry.

- :mod:`madloop.theory.gaussian`: the Gaussian loops (moment recursion for every batch-union
  regime, the log-det drift);
- :mod:`madloop.theory.curation`: reward-curated Gaussian loops (Luce choice among K);
- :mod:`madloop.theory.discrete`: Wright–Fisher (categorical) loops;
- :mod:`madloop.theory.regression`: the linear-regression loop (fixed / fresh design, ridge);
- :mod:`madloop.theory.preprocess`: ``loop.preprocess`` (a clip keeps a truncated Gaussian);
- :mod:`madloop.theory.pool`: the web pool's moment recursion and critical fractions.

A **predictor** says which arms it applies to and returns their expected metrics, as metric
suites do for measurements: ``register_predictor(Predictor(name, applies, predict))``. The
experiment asks every registered predictor of each arm (:func:`predictions_frame`), so a new
theory is one registration, never a branch on a family's name in the runner. This package imports
nothing above the regimes: the caller hands each predictor the arm's config, its real source and
its regime.
"""

# the built-in predictors register themselves on import
from madloop.theory import curation, discrete, gaussian, preprocess, regression  # noqa: E402, I001
from madloop.theory.registry import (
    PREDICTORS,
    THEORY_COLUMNS,
    Predictor,
    arm_predictions,
    predictions_frame,
    predictions_table,
    register_predictor,
)

__all__ = [
    "PREDICTORS",
    "THEORY_COLUMNS",
    "Predictor",
    "arm_predictions",
    "curation",
    "discrete",
    "gaussian",
    "predictions_frame",
    "predictions_table",
    "regression",
    "preprocess",
    "register_predictor",
]
