"""The predictor registry (see :mod:`madloop.theory`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from madloop.registry import Registry

THEORY_COLUMNS = ["arm", "generation", "metric", "theory"]


@dataclass(frozen=True)
class Predictor:
    """``applies(config, regime)`` says whether the closed form holds for an arm;
    ``predict(arm, config, real, regime)`` (``arm`` its name) returns {metric: expected value per
    generation 1..T} or, for engines that report several labels (web-pool lineages),
    {label: {metric: values}} with ``labels = True``."""

    name: str
    applies: Callable[[Any, Any], bool]
    predict: Callable[[str, Any, Any, Any], dict[str, Any]]
    labels: bool = False


#: the closed-form predictors, by name (the built-in ones register when madloop.theory loads)
PREDICTORS: Registry[Predictor] = Registry("theory")
register_predictor = PREDICTORS.register


def arm_predictions(
    arm: str, config: Any, real: Callable[[], Any], regime: Any
) -> dict[str, dict[str, Any]]:
    """{arm label: {metric: (T,)}} from every predictor that applies to the arm. ``real`` builds
    the arm's real source; it is called only when a predictor applies (a source may be costly
    to build: images, corpora)."""
    out: dict[str, dict[str, Any]] = {}
    source = None
    for predictor in PREDICTORS.values():
        if not predictor.applies(config, regime):
            continue
        source = real() if source is None else source
        found = predictor.predict(arm, config, source, regime)
        for label, metrics in found.items() if predictor.labels else [(arm, found)]:
            out.setdefault(label, {}).update(metrics)
    return out


def predictions_table(arms: Iterable[tuple[str, Any, Any, Any]]) -> Any:
    """The ``theory`` table (arm, generation, metric, theory) of (name, config, real factory,
    regime) tuples, as a :class:`madloop.tables.Table` (empty: no rows, no columns)."""
    from madloop.tables import Strings, Table

    arm_labels: dict[str, int] = {}
    metric_labels: dict[str, int] = {}
    arm, gen, metric, theory = [], [], [], []
    for name, config, real, regime in arms:
        for label, metrics in arm_predictions(name, config, real, regime).items():
            for m, values in metrics.items():
                values = np.asarray(values, dtype=float).reshape(-1)
                arm.append(np.full(values.size, arm_labels.setdefault(label, len(arm_labels))))
                gen.append(np.arange(1, values.size + 1))
                metric.append(np.full(values.size, metric_labels.setdefault(m, len(metric_labels))))
                theory.append(values)
    if not theory:
        return Table(None, names=THEORY_COLUMNS)
    return Table(
        {
            "arm": Strings(list(arm_labels), np.concatenate(arm)),
            "generation": np.concatenate(gen),
            "metric": Strings(list(metric_labels), np.concatenate(metric)),
            "theory": np.concatenate(theory),
        }
    )


def predictions_frame(arms: Iterable[tuple[str, Any, Any, Any]]) -> Any:
    """The ``theory`` table (arm, generation, metric, theory) of (name, config, real factory,
    regime) tuples, typed even when empty so it merges into the summary cleanly."""
    import pandas as pd

    table = predictions_table(arms)
    if len(table) == 0:
        return pd.DataFrame(
            {
                "arm": pd.Series(dtype=object),
                "generation": pd.Series(dtype=np.int64),
                "metric": pd.Series(dtype=object),
                "theory": pd.Series(dtype=float),
            }
        )
    return table.frame()
