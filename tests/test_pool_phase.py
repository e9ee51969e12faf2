"""The web-pool phase-diagram example: its grid, its theory boundary, its plot, and (when the sweep
module of issue 6 is present) the sweep itself."""

from __future__ import annotations

import copy
import itertools
import re
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from madloop.config import parse
from madloop.experiment import run
from madloop.pool import phase_boundary
from madloop.report.phase import plot_pool_phase

ROOT = Path(__file__).resolve().parents[1]
PHASE = ROOT / "examples" / "web-pool-phase.toml"


def phase_config() -> tuple[dict, dict]:
    raw = tomllib.loads(PHASE.read_text())
    return {k: v for k, v in raw.items() if k != "sweep"}, raw["sweep"]


def with_keys(raw: dict, coords: dict) -> dict:
    out = copy.deepcopy(raw)
    for key, value in coords.items():
        node = out
        *head, last = key.split(".")
        for p in head:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def test_every_grid_point_is_a_valid_config_and_the_grid_straddles_the_boundary():
    base, sweep = phase_config()
    grid = sweep["grid"]
    assert set(grid) == {"loop.adoption", "loop.detector.tpr"} and sweep["seeds"] >= 1
    for values in itertools.product(*grid.values()):
        parse(with_keys(base, dict(zip(grid, values, strict=True))))
    _, arms = parse(base)
    bound = phase_boundary(arms[0], grid["loop.adoption"], tolerance=2.0)
    tpr = bound["critical_tpr"].to_numpy()
    assert np.all(np.isfinite(tpr))
    # low adoption needs no detector; the highest needs one inside the swept TPR range
    assert tpr[0] == 0.0 and 0.0 < tpr[-1] < max(grid["loop.detector.tpr"])
    assert (tpr > 0).sum() >= 3


def test_phase_plot_helper_draws_cells_and_boundaries(tmp_path):
    base, _ = phase_config()
    base.update(generations=4, replicates=20)
    rows = []
    for a, t in itertools.product([0.0, 0.9], [0.0, 0.9]):
        cfg = with_keys(base, {"loop.adoption": a, "loop.detector.tpr": t})
        m = run(cfg).metrics
        last = m[(m.generation == 4) & (m.metric == "mean_error_sq")]
        rows.append(pd.DataFrame({"adoption": a, "tpr": t, "value": last["value"]}))
    cells = pd.concat(rows)
    _, arms = parse(base)
    bound = phase_boundary(arms[0], [0.0, 0.5, 0.9], tolerance=2.0)
    path = plot_pool_phase(cells, {"2x": bound}, tmp_path / "phase.png", level=0.1, title="t")
    assert path.exists() and path.stat().st_size > 10_000


def test_phase_example_runs_as_a_sweep(tmp_path):
    pytest.importorskip(
        "madloop.sweeps",
        reason="madloop.sweeps (issue 6, `madloop sweep`) is not on this branch yet",
    )
    from typer.testing import CliRunner

    from madloop.cli import app

    text = PHASE.read_text()
    text = re.sub(r"(?m)^generations = \d+", "generations = 4", text)
    text = re.sub(r"(?m)^replicates = \d+", "replicates = 20", text)
    text = re.sub(
        r"(?m)^grid = .*$",
        'grid = { "loop.adoption" = [0.0, 0.99], "loop.detector.tpr" = [0.0, 0.99] }',
        text,
    )
    text = re.sub(r"(?m)^seeds = \d+", "seeds = 1", text)
    cfg = tmp_path / "phase.toml"
    cfg.write_text(text)
    res = CliRunner().invoke(app, ["sweep", str(cfg), "--out", str(tmp_path / "sweep")])
    assert res.exit_code == 0, res.output
    table = pd.read_parquet(tmp_path / "sweep" / "results.parquet")
    assert {"loop.adoption", "loop.detector.tpr", "seed", "arm", "metric", "value"} <= set(
        table.columns
    )
    last = table[(table.metric == "mean_error_sq") & (table.generation == 4)]
    cell = last.groupby(["loop.adoption", "loop.detector.tpr"])["value"].mean()
    assert cell.loc[(0.99, 0.0)] > cell.loc[(0.0, 0.0)]
