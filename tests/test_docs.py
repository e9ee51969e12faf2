"""The documentation site: its generated pages say what the code does, and the whole site builds
with ``mkdocs build --strict`` (a broken link, a missing page, a docstring mkdocstrings cannot
read or a notebook that does not convert fails it)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_hooks():
    spec = importlib.util.spec_from_file_location("madloop_docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_page_has_every_command_and_option() -> None:
    """The page is written from the typer app, so a new command or option appears in it."""
    import typer.main

    from madloop.cli import app

    page = load_hooks().cli_page()
    command = typer.main.get_command(app)
    assert len(command.commands) >= 6
    for name, sub in command.commands.items():
        assert f"madloop {name}" in page, name
        for param in sub.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("--"):
                    assert opt in page, (name, opt)


def test_reference_pages_list_every_family_source_and_regime() -> None:
    from madloop.data.base import load_sources
    from madloop.models.base import load_families
    from madloop.regimes import load_regimes

    hooks = load_hooks()
    for page, names, key in [
        (hooks.families_page(), load_families(), "model.family"),
        (hooks.sources_page(), load_sources(), "data.source"),
        (hooks.regimes_page(), load_regimes(), "loop.regime"),
    ]:
        for name in names:
            assert f"\n## {name}\n" in page, name
        assert key in page or key.split(".")[0] in page
    assert "`model.covariance_estimator`" in hooks.families_page()


@pytest.mark.slow
def test_site_builds_strict(tmp_path: Path) -> None:
    for package in ("mkdocs", "material", "mkdocstrings_handlers.python", "mkdocs_jupyter"):
        pytest.importorskip(package)
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "MADLOOP_DOCS_EXECUTE": "false"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            str(ROOT / "mkdocs.yml"),
            "-d",
            str(site),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    cli = (site / "reference" / "cli" / "index.html").read_text()
    assert "madloop sweep" in cli and "--track" in cli
    api = (site / "api" / "index.html").read_text()
    assert "register_family" in api and "RunResult" in api
    for stem in ("gaussian-vs-theory", "own-model-loop", "sweep-phase-diagram"):
        assert (site / "tutorials" / stem / "index.html").exists(), stem
    for page in (
        "getting-started",
        "concepts",
        "theory",
        "sweeps",
        "report",
        "tracking",
        "metrics",
        "reproductions",
        "own-model",
        "architecture",
    ):
        assert (site / page / "index.html").exists(), page
