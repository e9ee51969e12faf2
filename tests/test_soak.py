"""A shorter soak (benchmarks/soak.py): a long fully synthetic Gaussian run, d = 10, n = 100, stays
finite, follows its log-det theory to the last generation and does not grow in memory."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "benchmarks_soak", Path(__file__).parent.parent / "benchmarks" / "soak.py"
)
assert _SPEC is not None and _SPEC.loader is not None
soak = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = soak  # its dataclass looks its module up there
_SPEC.loader.exec_module(soak)

K = 4.0  # standard errors


@pytest.mark.slow
@pytest.mark.parametrize("mode, generations", [("exact", 2_000), ("sample", 200)])
def test_long_run_is_finite_on_theory_and_flat_in_memory(mode: str, generations: int) -> None:
    s = soak.soak_in_subprocess(mode, generations, 50, mark=generations // 5)
    report = soak.show(s)
    # n = 100 > d = 10: every fitted covariance is full rank, every metric finite
    assert set(s.nonfinite) >= {"log_det_change", "mean_error_sq", "trace_ratio"}, report
    assert all(v == 0 for v in s.nonfinite.values()), report
    # E[log det Σ_T] - log det Σ_0 = T Σ_i (ψ((n - i)/2) + log(2/(n - 1))): about -0.58 T here
    assert s.log_det_theory < -0.5 * generations, report
    assert abs(s.log_det_z) <= K, report
    assert s.rss_growth <= 10.0, report
