"""Experiment tracking (``madloop run --track mlflow``, ``[tracking]``): the run is written to a
real MLflow file store and read back through MLflow's own client, or to offline W&B runs read
back from their ``.wandb`` record files; bad tables are config errors
naming their field; tracking changes neither a checkpoint's identity nor ``madloop --help``."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def track(tmp_path: Path, backend: str, uri: str) -> tuple[Any, Path]:
    """``madloop run TINY --track BACKEND --track-uri URI`` into ``tmp_path/run``: the CLI's
    result and the run directory."""
    cfg, out = write(tmp_path, TINY), tmp_path / "run"
    args = ["run", str(cfg), "--out", str(out), "-q", "--no-plots", "--track", backend]
    return runner.invoke(app, [*args, "--track-uri", uri]), out


def test_run_is_logged_and_read_back(tmp_path: Path, tracking_env: Path, shared_db: Path) -> None:
    mlflow = pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    store = shared_db
    result, out = track(tmp_path, "mlflow", str(store))
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
    assert "(valid: mlflow, wandb)" in result.output
    assert not (tmp_path / "r").exists()  # refused before the run


def test_an_unreachable_tracker_fails_after_the_run_is_written(
    tmp_path: Path, tracking_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    result, out = track(tmp_path, "mlflow", "http://127.0.0.1:9")
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


def test_help_does_not_import_a_tracker() -> None:
    code = (
        "import sys; sys.argv = ['madloop', 'run', '--help']\n"
        "from madloop.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('LOADED' if {'mlflow', 'wandb'} & set(sys.modules) else 'CLEAN')"
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


def wandb_records(path: Path) -> Iterator[Any]:
    """The protobuf records of an offline W&B run file (``run-<id>.wandb``): W&B's LevelDB-style
    log (a 7-byte header ``:W&B``, then 32 KiB blocks of records, each ``crc u32, length u16,
    type u8`` and a chunk: 1 whole, 2 first, 3 middle, 4 last). wandb 0.31 ships no Python
    reader for it (the writer is its Go core), so the test reads the format itself."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:8]
    block, pos, chunk = 32768, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # the zero padding at a block's end
            pos += left
            continue
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            yield record


def read_wandb_run(path: Path) -> dict[str, Any]:
    """An offline run's name, group, project, config, history (step -> {key: value}), summary and
    artifact names, from its records."""
    run: dict[str, Any] = {"history": {}, "summary": {}, "artifacts": []}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run |= {"name": r.display_name, "group": r.run_group, "project": r.project}
            run["config"] = {u.key: json.loads(u.value_json) for u in r.config.update}
        elif kind == "history":
            items = {"/".join(i.nested_key or [i.key]): json.loads(i.value_json)
                     for i in record.history.item}  # fmt: skip
            run["history"][items["_step"]] = items
        elif kind == "summary":
            for u in record.summary.update:
                run["summary"]["/".join(u.nested_key or [u.key])] = json.loads(u.value_json)
        elif kind == "artifact":
            run["artifacts"].append(
                (record.artifact.name, {c.path for c in record.artifact.manifest.contents})
            )
    return run


def test_wandb_writes_an_offline_run_per_arm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb")
    for name in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_PROJECT", "WANDB_ENTITY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "online")  # the tracker forces offline all the same
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))  # --track-uri wins over this
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    result, out = track(tmp_path, "wandb", "tracked-here")
    assert result.exit_code == 0, result.output
    assert "tracked: wandb run tracked in" in result.output

    files = sorted((tmp_path / "tracked-here" / "wandb").glob("offline-run-*/run-*.wandb"))
    runs = {r["name"]: r for r in map(read_wandb_run, files)}
    assert set(runs) == {"base", "fresh"}
    assert not (tmp_path / "elsewhere").exists()
    summary = pd.read_csv(out / "summary.csv")
    for arm, run in runs.items():
        assert run["group"] == "tracked" and run["project"] == "tracked"
        rows = summary[summary["arm"] == arm]
        assert "trace_ratio" in set(rows["metric"])
        for metric in sorted(set(rows["metric"])):  # every metric, every generation
            m = rows[(rows["metric"] == metric) & rows["mean"].notna()]
            want = {int(r.generation): float(r.mean) for r in m.itertuples()}
            got = {step: h[metric] for step, h in run["history"].items() if metric in h}
            assert got.keys() == want.keys() and len(got) >= 4, (arm, metric)
            for step, value in want.items():
                assert math.isclose(got[step], value, rel_tol=1e-12), (arm, metric, step)
            last = m[m["generation"] == m["generation"].max()].iloc[0]
            assert math.isclose(run["summary"][metric], float(last["mean"]), rel_tol=1e-12)
            theory = {s for s, h in run["history"].items() if f"theory/{metric}" in h}
            assert theory == {int(g) for g in m.dropna(subset=["theory"])["generation"]}
    assert runs["fresh"]["config"]["loop.regime"] == "fresh-data"
    assert runs["fresh"]["config"]["loop.real_size"] == 10
    assert runs["base"]["config"]["loop.synthetic_size"] == 20
    assert runs["base"]["config"]["data.dim"] == 2
    artifacts = [a for r in runs.values() for a in r["artifacts"]]
    assert len(artifacts) == 1 and artifacts[0][0] == "run-tracked"
    assert {"summary.csv", "manifest.json", "metrics.parquet"} <= artifacts[0][1]
    assert not any(p.startswith("checkpoints/") for p in artifacts[0][1])


def test_wandb_uri_is_a_folder() -> None:
    from madloop.config import TrackingConfig
    from madloop.tracking import resolve

    with pytest.raises(ConfigError) as err:
        resolve(TrackingConfig(backend="wandb", uri="http://localhost:8080"), name="x")
    assert err.value.problems[0].startswith("tracking.backend: wandb runs offline")
