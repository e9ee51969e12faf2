"""Your own model: madloop.register_family(name, cls) from a script, a notebook (``__main__``), the
CLI's --import; every executor; sample-based metrics; bit-identical runs; the rng guard."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import madloop
from madloop.cli import app

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_METRICS = {"precision", "recall", "density", "coverage", "mmd", "wasserstein2"}


class MeanCov:  # ten lines: a Gaussian fit, every random number from rng
    def __init__(self, shrink: float = 1.0):
        self.shrink = shrink

    def fit(self, X, y=None, *, rng):
        self.mean, self.cov = X.mean(0), np.cov(X, rowvar=False) * self.shrink
        return self

    def sample(self, n, *, bias=1.0, rng):
        return rng.multivariate_normal(self.mean, bias * self.cov, size=n)


class Sloppy(MeanCov):
    def sample(self, n, *, bias=1.0, rng):
        return np.random.default_rng().multivariate_normal(self.mean, self.cov, size=n)


def config(family: str = "meancov", **model) -> dict:
    return {
        "name": "own",
        "generations": 3,
        "replicates": 2,
        "data": {"source": "gaussian", "dim": 2},
        "model": {"family": family, **model},
        "loop": {"synthetic_size": 60},
    }


@pytest.fixture(autouse=True)
def registered():
    madloop.register_family("meancov", MeanCov)
    madloop.register_family("sloppy", Sloppy)


def test_run_gives_sample_metrics_bit_identical():
    a = madloop.run(config(shrink=0.9))
    b = madloop.run(config(shrink=0.9))
    assert SAMPLE_METRICS <= set(a.summary["metric"])
    assert len(a.summary) > 0 and a.metrics.equals(b.metrics)


def test_wrong_key_is_a_config_error_naming_it():
    wrong = r"model\.shrnk: unknown key; did you mean 'shrink'"
    with pytest.raises(madloop.ConfigError, match=wrong):
        madloop.run(config(shrnk=0.5))
    with pytest.raises(madloop.ConfigError, match=r"model\.shrink: must be a number"):
        madloop.run(config(shrink="lots"))


def test_model_ignoring_rng_is_stopped_or_warned():
    with pytest.raises(madloop.ConfigError, match="ignores rng.*np.random.*check_rng = false"):
        madloop.run(config("sloppy"))
    with pytest.warns(RuntimeWarning, match="ignores rng"):
        madloop.run(config("sloppy", check_rng=False) | {"generations": 1})


def test_no_metric_is_said_not_an_empty_table():
    class Labels(MeanCov):
        def sample(self, n, *, bias=1.0, rng):
            return rng.integers(0, 3, size=(n, 2))  # not real-valued vectors

    madloop.register_family("labels", Labels)
    notes: list[str] = []
    with pytest.warns(RuntimeWarning, match="no metric applies"):
        madloop.run(config("labels") | {"generations": 1}, log=notes.append)
    assert any("no metric applies to family 'labels'" in n for n in notes)


def test_readme_example_runs():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Loop your own model") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 16
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})


SCRIPT = """
import numpy as np
import madloop

class KDE:
    def __init__(self, bandwidth: float = 0.3):
        self.bandwidth = bandwidth
    def fit(self, X, y=None, *, rng):
        self.X = np.asarray(X); return self
    def sample(self, n, *, bias=1.0, rng):
        x = self.X[rng.integers(len(self.X), size=n)]
        return x + np.sqrt(bias) * self.bandwidth * rng.standard_normal(x.shape)

madloop.register_family("nbkde", KDE)
CONFIG = {"name": "nb", "generations": 2, "replicates": 2,
          "data": {"source": "gaussian", "dim": 2}, "model": {"family": "nbkde"},
          "loop": {"synthetic_size": 50},
          "sweep": {"seeds": 2, "grid": {"model.bandwidth": [0.1, 0.3]}}}

if __name__ == "__main__":
    import sys
    a = madloop.sweep(CONFIG, out=sys.argv[1] + "/a", executor="local", workers=2)
    b = madloop.sweep(CONFIG, out=sys.argv[1] + "/b", executor="serial")
    assert not a.errors, a.errors
    assert {"mmd", "precision", "wasserstein2"} <= set(a.results["metric"])
    cols = ["task", "metric", "generation", "replicate", "value"]
    key = [c for c in cols if c in a.results.columns and c != "value"]
    x = a.results.sort_values(key).reset_index(drop=True)
    y = b.results.sort_values(key).reset_index(drop=True)
    assert x.equals(y), "local pool and serial differ"
    # the families travel to the workers in memory only: no file of either sweep holds them
    from pathlib import Path
    files = [p for d in ("a", "b") for p in Path(sys.argv[1], d).rglob("*") if p.is_file()]
    assert files
    for f in files:
        assert b"cloudpickle" not in f.read_bytes(), f"a pickled payload reached {f}"
    print("OK", len(a.results))
"""


def _env() -> dict[str, str]:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def test_sweep_local_pool_with_factory_in_main(tmp_path):
    script = tmp_path / "notebook.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "OK" in done.stdout


def test_sweep_on_ray(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    from madloop.sweeps import sweep  # madloop.sweeps is the package once it is imported

    cfg = config(shrink=0.8) | {"generations": 2, "sweep": {"seeds": 2}}
    ray = sweep(cfg, out=tmp_path / "ray", executor="ray", workers=1)
    serial = sweep(cfg, out=tmp_path / "serial", executor="serial")
    assert not ray.errors, ray.errors
    assert SAMPLE_METRICS <= set(ray.results["metric"])
    key = [c for c in ray.results.columns if c != "value"]
    x = ray.results.sort_values(key).reset_index(drop=True)
    y = serial.results.sort_values(key).reset_index(drop=True)
    assert x.equals(y)


def test_cli_import_file(tmp_path):
    models = tmp_path / "mymodels.py"
    models.write_text(textwrap.dedent(SCRIPT.split("CONFIG =")[0]).replace("nbkde", "clikde"))
    toml = tmp_path / "exp.toml"
    toml.write_text(
        'name = "cli"\ngenerations = 2\nreplicates = 2\n[data]\nsource = "gaussian"\ndim = 2\n'
        '[model]\nfamily = "clikde"\nbandwidth = 0.2\n[loop]\nsynthetic_size = 40\n'
    )
    runner = CliRunner()
    missing = runner.invoke(app, ["validate", str(toml)])
    assert missing.exit_code == 2 and "unknown family 'clikde'" in missing.output
    ok = runner.invoke(app, ["validate", str(toml), "--import", str(models)])
    assert ok.exit_code == 0, ok.output
    out = tmp_path / "run"
    done = runner.invoke(
        app, ["run", str(toml), "--import", str(models), "-o", str(out), "-q", "--no-plots"]
    )
    assert done.exit_code == 0, done.output
    assert "not checkpointed" in done.output  # no get_state(): the arm runs, unsaved
    assert "mmd" in (out / "summary.csv").read_text()
    bad = runner.invoke(app, ["validate", str(toml), "--import", str(tmp_path / "nope.py")])
    assert bad.exit_code == 2 and "--import" in bad.output
