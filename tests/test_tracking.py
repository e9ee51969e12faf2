"""Experiment tracking (``madloop run --track mlflow``, ``[tracking]``): the run is written to a
real MLflow file store and read back through MLflow's own client; bad tables are config errors
naming their field; tracking changes neither a checkpoint's identity nor ``madloop --help``."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from madloop.cli import app
from madloop.config import ConfigError, parse

TINY = """\
name = "tracked"
seed = 5
generations = 4
replicates = 6

[data]
source = "gaussian"
dim = 2

[model]
family = "gaussian"
mode = "exact"

[loop]
regime = "fully-synthetic"
synthetic_size = 20

[[arms]]
name = "fresh"
loop.regime = "fresh-data"
loop.real_size = 10
"""
runner = CliRunner()


@pytest.fixture(scope="module")
def shared_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite store for the tests that write runs: MLflow migrates a new store's schema,
    which takes seconds, so it is done once."""
    return tmp_path_factory.mktemp("mlflow") / "store.db"


@pytest.fixture
def tracking_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """MLflow pointed at a temporary SQLite store, its telemetry off; the working directory is
    ``tmp_path``, so the artefacts (``./mlruns``) land there too."""
    store = tmp_path / "env.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")
    monkeypatch.chdir(tmp_path)
    return store


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tracked.toml"
    path.write_text(text)
    return path


def test_run_is_logged_and_read_back(tmp_path: Path, tracking_env: Path, shared_db: Path) -> None:
    mlflow = pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    store = shared_db
    cfg = write(tmp_path, TINY)
    out = tmp_path / "run"
    args = ["run", str(cfg), "--out", str(out), "-q", "--no-plots", "--track", "mlflow"]
    result = runner.invoke(app, [*args, "--track-uri", str(store)])
    assert result.exit_code == 0, result.output
    assert "tracked: mlflow run" in result.output

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("tracked")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.data.tags["mlflow.runName"]: r for r in runs if r not in parents}
    assert len(parents) == 1 and set(children) == {"base", "fresh"}
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["loop.synthetic_size"] == "20"
    assert parent.data.params["data.dim"] == "2"
    assert children["fresh"].data.params["loop.regime"] == "fresh-data"
    assert children["fresh"].data.params["loop.real_size"] == "10"
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children.values())

    summary = pd.read_csv(out / "summary.csv")
    for arm, child in children.items():
        rows = summary[(summary["arm"] == arm) & (summary["metric"] == "trace_ratio")]
        history = client.get_metric_history(child.info.run_id, "trace_ratio")
        got = {m.step: m.value for m in history}
        want = {int(r.generation): float(r.mean) for r in rows.itertuples()}
        assert got.keys() == want.keys() and len(got) >= 4
        for step, value in want.items():
            assert math.isclose(got[step], value, rel_tol=1e-12), (arm, step)
        theory = client.get_metric_history(child.info.run_id, "theory/trace_ratio")
        expected = rows.dropna(subset=["theory"])
        assert len(theory) == len(expected) > 0

    artefacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"summary.csv", "manifest.json", "metrics.parquet"} <= artefacts
    assert "checkpoints" not in artefacts  # large and rebuilt by a resume, not worth copying
    assert not tracking_env.exists()  # --track-uri beat MLFLOW_TRACKING_URI
    assert mlflow.__version__


def test_tracking_table_defaults_to_the_environment_store(
    tmp_path: Path, tracking_env: Path, shared_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{shared_db}")
    cfg = write(tmp_path, TINY.replace('name = "tracked"', 'name = "t2"') + TABLE)
    result = runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "r"), "-q"])
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=f"sqlite:///{shared_db}")
    experiment = client.get_experiment_by_name("madloop-tests")  # the table's experiment
    assert experiment is not None
    assert len(client.search_runs([experiment.experiment_id])) == 3  # parent + 2 arms


TABLE = """
[tracking]
backend = "mlflow"
experiment = "madloop-tests"
"""


@pytest.mark.parametrize(
    ("table", "field", "words"),
    [
        ('backend = "wandbx"', "tracking.backend", "unknown tracking backend 'wandbx'"),
        ("backend = 3", "tracking.backend", "must be a string"),
        ('uri = "/etc/mlruns"', "tracking.uri", "relative path"),
        ('uri = "file:///tmp/x"', "tracking.uri", "--track-uri"),
        ('uri = "../up"', "tracking.uri", "'..'"),
        ('experiment = ""', "tracking.experiment", "must not be empty"),
        ('server = "x"', "tracking.server", "unknown key"),
    ],
)
def test_bad_tracking_table_names_its_field(table: str, field: str, words: str) -> None:
    raw = TINY + f"\n[tracking]\n{table}\n"
    import tomllib

    with pytest.raises(ConfigError) as err:
        parse(tomllib.loads(raw))
    lines = [p for p in err.value.problems if p.startswith(field + ":")]
    assert lines, err.value.problems
    assert words in lines[0], lines[0]


def test_an_arm_cannot_override_tracking() -> None:
    import tomllib

    raw = TINY + '\n[[arms]]\nname = "x"\ntracking.experiment = "other"\n'
    with pytest.raises(ConfigError) as err:
        parse(tomllib.loads(raw))
    assert any(p.startswith("arms[x].tracking") for p in err.value.problems)


def test_unknown_track_flag_is_a_usage_error(tmp_path: Path) -> None:
    cfg = write(tmp_path, TINY)
    result = runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "r"), "--track", "x"])
    assert result.exit_code == 2
    assert "--track: unknown tracking backend 'x'" in result.output
    assert not (tmp_path / "r").exists()  # refused before the run


def test_an_unreachable_tracker_fails_after_the_run_is_written(
    tmp_path: Path, tracking_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    cfg = write(tmp_path, TINY)
    out = tmp_path / "r"
    args = ["run", str(cfg), "--out", str(out), "-q", "--no-plots", "--track", "mlflow"]
    result = runner.invoke(app, [*args, "--track-uri", "http://127.0.0.1:9"])
    assert result.exit_code == 1, result.output
    assert "tracking: mlflow at http://127.0.0.1:9 failed" in result.output
    assert (out / "summary.csv").exists() and (out / "manifest.json").exists()


def test_adding_tracking_does_not_block_a_resume(tmp_path: Path) -> None:
    """Tracking changes no number, so a checkpoint made without it resumes with it."""
    import tomllib

    import madloop

    out = tmp_path / "run"
    first = madloop.run(tomllib.loads(TINY), out=out)
    again = madloop.run(tomllib.loads(TINY + TABLE), out=out, resume=True)
    pd.testing.assert_frame_equal(first.summary, again.summary)
    assert again.manifest["config"]["tracking"]["experiment"] == "madloop-tests"


def test_help_does_not_import_mlflow() -> None:
    code = (
        "import sys; sys.argv = ['madloop', 'run', '--help']\n"
        "from madloop.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('LOADED' if 'mlflow' in sys.modules else 'CLEAN')"
    )
    src = Path(__file__).resolve().parents[1] / "src"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    assert done.stdout.strip().endswith("CLEAN"), done.stdout
