"""What an import loads, checked in a fresh interpreter's ``sys.modules`` (not by reading source):
the report reads directories and never pulls in the loop; ``import madloop`` alone is light."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
LOOP_MODULES = ("madloop.loop", "madloop.experiment", "madloop.sweeps", "madloop.pool",
                "madloop.checkpoint")  # fmt: skip
HEAVY = ("pandas", "matplotlib", "scipy", "torch")


def loaded_after(statement: str) -> set[str]:
    """The names in ``sys.modules`` after running ``statement`` in a new Python process."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    path = os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "MPLBACKEND": "Agg"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "module", ["madloop.report.html", "madloop.report.phase", "madloop.report.plots"]
)
def test_the_report_never_imports_the_loop(module):
    loaded = loaded_after(f"import {module}")
    assert module in loaded
    assert not loaded & set(LOOP_MODULES), sorted(loaded & set(LOOP_MODULES))


def test_import_madloop_is_light():
    loaded = loaded_after("import madloop")
    assert "madloop" in loaded
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_top_level_functions_are_not_shadowed_by_subpackages():
    """``madloop.sweep`` is the function even once the package that defines it is imported."""
    code = (
        "import madloop.sweeps, madloop\n"
        "assert callable(madloop.sweep) and callable(madloop.run), madloop.sweep\n"
        "assert madloop.sweep.__module__ == 'madloop.sweeps.runner'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
