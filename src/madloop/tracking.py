"""Experiment tracking: a finished run, logged to MLflow or (offline) to Weights & Biases.

``madloop run CONFIG --track mlflow`` (or a ``[tracking]`` table in the config) logs the run after
its tables are written, so tracking can never change a number or leave a half-written run:

- one MLflow *parent run* per madloop run, named after the config, holding the resolved base
  config as parameters (flattened dotted keys: ``loop.synthetic_size``), the madloop version, git
  commit and command as tags, and the run directory as artefacts (without ``checkpoints/`` and
  the data cache, which are large and can be rebuilt);
- one *nested child run* per arm (per lineage for the web pool: a label of ``summary.csv``),
  holding that arm's resolved config as parameters and, per metric, the mean over the chains at
  each generation (``step`` = generation) under the metric's own name, and the closed-form
  expectation, where a theory applies, as ``theory/<metric>``.

A child per arm (rather than keys like ``arm/metric`` in one run) lets MLflow's run comparison
put arms side by side on the same metric key, as it does for runs of different configs.

The tracker writes to a local store unless told otherwise: ``./mlflow.db`` (SQLite, MLflow's own
default since its folder store went into maintenance) with the artefacts under ``./mlruns``, or a
``uri`` (a tracking server, another ``.db`` file); nothing needs a server. ``mlflow`` is imported
only here and only when a run is tracked, so ``madloop --help`` and untracked runs never load it
(install it with ``pip install 'madloop[tracking]'``).

``--track wandb`` writes the same run to Weights & Biases, always offline (``mode="offline"``,
no login, nothing leaves the machine; ``wandb sync`` uploads it later): one W&B run per arm,
grouped under the config's name, with the arm's config, the same metric points and, on the first
arm's run, the run directory as an artifact. Its ``uri`` is the folder W&B writes its ``wandb/``
folder in (default: the current directory, or ``WANDB_DIR``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from madloop.config import ConfigError, TrackingConfig, flatten
from madloop.storage.layout import CACHE, CHECKPOINTS

if TYPE_CHECKING:
    from madloop.experiment import RunResult

#: MLflow accepts these characters in metric and parameter keys; others become "_"
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")
#: MLflow's limits per call of ``log_batch`` (metrics and params) and per parameter value
_BATCH_METRICS = 1000
_BATCH_PARAMS = 100
_PARAM_VALUE_MAX = 6000
#: where runs go when nobody says: MLflow's own default, a SQLite file in the current directory
#: (the artefacts go to ``./mlruns`` beside it)
DEFAULT_STORE = "mlflow.db"
#: what a run directory holds that is not worth copying into the tracker
_NOT_ARTEFACTS = (CHECKPOINTS, CACHE)


@dataclass(frozen=True)
class Tracking:
    """Where a run is logged: the backend, its tracking URI and the experiment's name."""

    backend: str
    uri: str
    experiment: str


def resolve(
    config: TrackingConfig | None,
    *,
    name: str,
    backend: str | None = None,
    uri: str | None = None,
) -> Tracking | None:
    """The tracking of a run, or None: the command line (``--track``, ``--track-uri``) over the
    config's ``[tracking]`` table over ``MLFLOW_TRACKING_URI`` (``WANDB_DIR`` for wandb) over
    ``./mlflow.db`` (the current directory for wandb).

    Raises :class:`ConfigError` naming ``tracking.backend`` (or ``--track``) for a backend that
    does not exist or whose package is not installed, before the run starts rather than after it.
    """
    if backend is None and config is None:
        return None
    if backend is not None:  # the command line's: checked as the table's field would be
        try:
            TrackingConfig(backend=backend)
        except ValueError as err:
            problem = str(err).split("Value error, ")[-1].splitlines()[0]
            raise ConfigError([f"--track: {problem}"]) from None
    chosen = backend or (config.backend if config else "mlflow")
    where = "--track" if backend is not None else "tracking.backend"
    if importlib.util.find_spec(chosen) is None:
        raise ConfigError(
            [
                f"{where}: {chosen!r} needs the {chosen} package, which is not installed; "
                "pip install 'madloop[tracking]'"
            ]
        )
    uri = uri or (config.uri if config else None)
    if chosen == "wandb":
        if uri is not None and "://" in uri:
            raise ConfigError([f"{where}: wandb runs offline, so its uri is a folder, not {uri}"])
        uri = str(Path(uri or os.environ.get("WANDB_DIR") or ".").expanduser().resolve())
    else:
        uri = store_uri(uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_STORE)
    experiment = (config.experiment if config else None) or name
    return Tracking(chosen, uri, experiment)


def store_uri(where: str) -> str:
    """A tracking URI from what a person wrote: a URI (``http://``, ``sqlite:///``) as it is; a
    path to a ``.db`` file as a local SQLite store; any other path as a folder store (which
    MLflow 3 keeps for old stores only: it refuses new ones unless
    ``MLFLOW_ALLOW_FILE_STORE=true``)."""
    if "://" in where:
        return where
    path = Path(where).expanduser().resolve()
    if path.suffix in (".db", ".sqlite"):
        return f"sqlite:///{path}"
    return path.as_uri()


def log_run(result: RunResult, tracking: Tracking) -> str:
    """Log a finished run to its tracker (see the module's docstring for what goes where);
    returns the tracker's id for it. The run must have a directory (``madloop.run(out=...)``)."""
    if result.out is None:
        raise ValueError("this run has no directory: pass out= to madloop.run")
    return LOGGERS[tracking.backend](result, tracking)


def log_mlflow(result: RunResult, tracking: Tracking) -> str:
    """Log a finished run to MLflow: a parent run and a nested child per arm; returns the
    parent's id."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

    assert result.out is not None
    client = MlflowClient(tracking_uri=tracking.uri)
    found = client.get_experiment_by_name(tracking.experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(tracking.experiment)
    manifest = result.manifest
    tags = {
        MLFLOW_RUN_NAME: result.config.name,
        "madloop.version": str(manifest.get("versions", {}).get("madloop", "")),
        "madloop.git_commit": str(manifest.get("git_commit") or ""),
        "madloop.command": str(manifest.get("command", ""))[:_PARAM_VALUE_MAX],
        "madloop.run_dir": str(result.out.resolve()),
    }
    parent = client.create_run(experiment_id, tags=tags)
    pid = parent.info.run_id
    base = {k: v for k, v in result.config.to_dict().items() if k not in ("arms", "tracking")}
    _log_params(client, pid, params(base), Param)
    for label, arm_config, rows in arm_rows(result):
        child_tags = {
            MLFLOW_RUN_NAME: label,
            MLFLOW_PARENT_RUN_ID: pid,
            "madloop.mode": str(manifest.get("modes", {}).get(label.split(":")[0], "")),
        }
        child = client.create_run(experiment_id, tags=child_tags)
        cid = child.info.run_id
        _log_params(client, cid, params(arm_config), Param)
        batch = list(metric_points(rows, Metric))
        for i in range(0, len(batch), _BATCH_METRICS):
            client.log_batch(cid, metrics=batch[i : i + _BATCH_METRICS])
        client.set_terminated(cid)
    with artefacts(result.out) as folder:
        client.log_artifacts(pid, str(folder))
    client.log_batch(pid, tags=[RunTag("madloop.arms", str(result.summary["arm"].nunique()))])
    client.set_terminated(pid)
    return pid


def log_wandb(result: RunResult, tracking: Tracking) -> str:
    """Log a finished run to Weights & Biases, offline: one run per arm in a group named after
    the config, the run directory an artifact of the first; returns the group.

    The environment is forced offline and silent while it runs, so neither a ``WANDB_MODE`` nor
    a missing login can send anything anywhere or stop to ask.
    """
    from unittest import mock  # here: unittest takes 15 ms of every run's start otherwise

    import wandb

    assert result.out is not None
    settings = wandb.Settings(
        mode="offline", silent=True, console="off", save_code=False, x_disable_stats=True
    )
    offline = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off"}
    group = result.config.name
    Path(tracking.uri).mkdir(parents=True, exist_ok=True)
    with mock.patch.dict(os.environ, offline), artefacts(result.out) as folder:
        for i, (label, arm_config, rows) in enumerate(arm_rows(result)):
            run = wandb.init(
                mode="offline",
                dir=tracking.uri,
                project=tracking.experiment,
                group=group,
                name=label,
                job_type="arm",
                config=flatten(arm_config),
                settings=settings,
            )
            steps: dict[int, dict[str, float]] = {}
            for name, value, step in metric_points(rows, lambda k, v, _, s: (k, v, s)):
                steps.setdefault(step, {})[name] = value
            for step in sorted(steps):
                run.log(steps[step], step=step)
            if i == 0:
                artifact = wandb.Artifact(key_wandb(f"run-{group}"), type="madloop-run")
                artifact.add_dir(str(folder))
                run.log_artifact(artifact)
            run.finish()
    return group


#: how each backend of :data:`madloop.config.TRACKING_BACKENDS` logs a finished run
LOGGERS: dict[str, Callable[[RunResult, Tracking], str]] = {
    "mlflow": log_mlflow,
    "wandb": log_wandb,
}


def arm_rows(result: RunResult) -> Iterator[tuple[str, dict[str, Any], Any]]:
    """Each label of the summary (an arm, or ``arm:lineage``) with its resolved config and its
    summary rows: what every backend logs as one run."""
    summary = result.summary
    arms = result.manifest.get("arms", {})
    for label in summary["arm"].drop_duplicates():
        yield str(label), _arm_config(arms, str(label)), summary[summary["arm"] == label]


def key_wandb(name: str) -> str:
    """A W&B artifact name (letters, digits, ``-``, ``_`` and ``.``; others become ``_``)."""
    return re.sub(r"[^A-Za-z0-9_\-.]", "_", name)[:128]


def _log_params(client: Any, run_id: str, pairs: list[tuple[str, str]], param: type) -> None:
    for i in range(0, len(pairs), _BATCH_PARAMS):
        client.log_batch(run_id, params=[param(k, v) for k, v in pairs[i : i + _BATCH_PARAMS]])


def _arm_config(arms: Mapping[str, Any], label: str) -> dict[str, Any]:
    """The resolved config of the arm a summary label belongs to (``arm`` or ``arm:lineage``)."""
    config = arms.get(label) or arms.get(label.rsplit(":", 1)[0]) or {}
    return {k: v for k, v in config.items() if k not in ("arms", "tracking")}


def key(name: str) -> str:
    """A metric or parameter name as MLflow accepts it (other characters become ``_``)."""
    return _KEY_UNSAFE.sub("_", name)[:250]


def params(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A resolved config as MLflow parameters: flattened dotted keys, values as text (lists and
    None as written in JSON-like text), cut to MLflow's length limit."""
    out = []
    for k, v in sorted(flatten(config).items()):
        text = "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
        out.append((key(k), text[:_PARAM_VALUE_MAX]))
    return out


def metric_points(rows: Any, metric: Callable[..., Any]) -> Iterator[Any]:
    """Metric points, ``metric(name, value, timestamp, step)``, from one label's summary rows:
    the mean over chains per generation, and the theory where it is finite. A non-finite mean
    (every chain stopped) is left out: MLflow stores NaN, but a chart with NaN steps says less
    than one that stops."""
    stamp = 0  # MLflow orders by step; the timestamp only breaks ties, so keep it fixed
    for row in rows.itertuples(index=False):
        step = int(row.generation)
        name = key(str(row.metric))
        if math.isfinite(row.mean):
            yield metric(name, float(row.mean), stamp, step)
        theory = getattr(row, "theory", math.nan)
        if theory is not None and math.isfinite(theory):
            yield metric(f"theory/{name}", float(theory), stamp, step)


@contextlib.contextmanager
def artefacts(out: Path) -> Iterator[Path]:
    """The run directory without its checkpoints and data cache, as a folder to upload: the
    directory itself when it holds neither, else a temporary copy of the rest."""
    if not any((out / name).exists() for name in _NOT_ARTEFACTS):
        yield out
        return
    with tempfile.TemporaryDirectory(prefix="madloop-artefacts-") as tmp:
        dest = Path(tmp) / out.name

        def skip(folder: str, names: list[str]) -> list[str]:
            return [n for n in names if n in _NOT_ARTEFACTS] if Path(folder) == out else []

        shutil.copytree(out, dest, ignore=skip)
        yield dest
