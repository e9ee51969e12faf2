"""Metrics: pure functions of fitted models, samples and the real data, grouped by kind.

The loop calls :func:`evaluate` after each generation; every registered suite that applies to the
(model, real source) pair adds its named values, one per replicate chain.
"""

from madloop.metrics import images, mixture2d  # noqa: E402,F401  (register their suites)
from madloop.metrics.base import METRIC_SUITES, MetricSuite, evaluate, register_suite
from madloop.metrics.gaussian import GAUSSIAN_METRICS, gaussian_metrics

__all__ = [
    "GAUSSIAN_METRICS",
    "METRIC_SUITES",
    "MetricSuite",
    "evaluate",
    "gaussian_metrics",
    "register_suite",
]

from madloop.metrics import density as _density  # noqa: E402, F401
from madloop.metrics import discrete as _discrete  # noqa: E402, F401  (registers its suite)
from madloop.metrics import regression as _regression  # noqa: E402, F401
from madloop.metrics import samples as _samples  # noqa: E402, F401  (last: a fallback suite)
from madloop.metrics import text as _text  # noqa: E402, F401
