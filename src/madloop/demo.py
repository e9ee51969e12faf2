"""The flagship study behind ``make demo``: every part whose modules are installed, one report.

Parts, each in its own folder under ``out`` (a run or sweep directory), then ``out/report.html``
showing them all:

- ``gaussian``: ``examples/mad-gaussian.toml``, the seed's Gaussian study (fully synthetic with
  λ = 1 and λ < 1, synthetic augmentation, fresh data) with its closed-form theory.
- ``phase``: the fresh-data phase diagram, ``examples/fresh-data-phase.toml`` run by
  ``madloop sweep``.
- ``images``: a small image loop with and without bias, the bias arms of
  ``examples/mad-digits.toml`` for 4 generations (when the neural families exist).

A part whose module is missing is skipped with a note on the page, never an error. The whole demo
stays within 15 minutes on 2 CPU cores; ``quick`` runs a small Gaussian study only (tests).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: dotted keys an arm uses to change only the sampling bias (λ or a family's native knob)
BIAS_KEYS = {f"sampling.{k}" for k in ("bias", "guidance_scale", "truncation", "temperature")}
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
IMAGE_GENERATIONS = 4  # the image loop's length in the demo (the example's own is longer)
IMAGE_FAMILIES = ("ddpm", "vae", "flow", "gan")
MAX_REPORT_MB = 10
PHASE_TIMEOUT_S = 420  # the sweep's share of the demo's 15 minutes

Echo = Callable[[str], None]


def _examples() -> Path:
    """The examples folder: next to the source tree, or under the current directory."""
    for candidate in (EXAMPLES, Path.cwd() / "examples"):
        if (candidate / "mad-gaussian.toml").exists():
            return candidate
    raise FileNotFoundError(
        "examples/mad-gaussian.toml not found: run the demo from the madloop repository"
    )


def gaussian_part(out: Path, *, quick: bool, echo: Echo) -> str:
    from madloop.experiment import run

    overrides: dict[str, Any] = {"generations": 8, "replicates": 20} if quick else {}
    result = run(_examples() / "mad-gaussian.toml", out=out, **overrides)
    result.write_plots()
    arms, seconds = result.summary["arm"].nunique(), result.manifest["timings_s"]["total"]
    return f"gaussian: {arms} arms in {seconds:.1f} s"


def phase_part(out: Path, *, quick: bool, echo: Echo) -> str | None:
    config = _examples() / "fresh-data-phase.toml"
    if importlib.util.find_spec("madloop.sweeps") is None:
        return "phase: skipped, `madloop sweep` is not installed in this version"
    if not config.exists():
        return f"phase: skipped, {config.name} is missing"
    if quick:
        return "phase: skipped in quick mode"
    cmd = [sys.executable, "-m", "madloop.cli", "sweep", str(config), "--out", str(out)]
    t0 = time.perf_counter()
    # its own session, so that on a timeout the sweep's worker processes end with it
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = proc.communicate(timeout=PHASE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate()
        return (
            f"phase: the sweep took over {PHASE_TIMEOUT_S} s and was stopped (finished tasks kept)"
        )
    if proc.returncode != 0:
        tail = output.strip().splitlines()[-3:]
        return f"phase: the sweep failed ({' / '.join(tail)})"
    return f"phase: {config.name} swept in {time.perf_counter() - t0:.1f} s"


def images_part(out: Path, *, quick: bool, echo: Echo, generations: int) -> str | None:
    from madloop.config import ConfigError
    from madloop.experiment import run
    from madloop.models.base import load_families

    config = _examples() / "mad-digits.toml"
    if not any(f in load_families() for f in IMAGE_FAMILIES):
        return f"images: skipped, no image family ({', '.join(IMAGE_FAMILIES)}) in this version"
    if not config.exists():
        return f"images: skipped, {config.name} is missing"
    if quick:
        return "images: skipped in quick mode"
    raw = tomllib.loads(config.read_text())
    # with and without bias: the base arm and the arms that change only the sampling bias
    raw["arms"] = [
        a for a in raw.get("arms", []) if set(a) - {"name"} <= {"sampling", *BIAS_KEYS}
    ]
    raw["generations"] = min(generations, int(raw.get("generations", generations)))
    t0 = time.perf_counter()
    try:
        run(raw, out=out).write_plots()
    except ConfigError as err:
        return f"images: {config.name} did not validate ({'; '.join(err.problems[:2])})"
    return f"images: {raw['generations']} generations in {time.perf_counter() - t0:.1f} s"


def run_demo(
    out: str | os.PathLike = "runs/demo",
    *,
    quick: bool = False,
    image_generations: int = IMAGE_GENERATIONS,
    echo: Echo = print,
) -> Path:
    """Run every available part into ``out/{gaussian,phase,images}``; write and return
    ``out/report.html`` (its figures also as PNGs under ``out/figures``)."""
    from madloop.report.html import build_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    notes = []
    steps: list[tuple[str, Callable[[Path], str | None]]] = [
        ("gaussian", lambda p: gaussian_part(p, quick=quick, echo=echo)),
        ("phase", lambda p: phase_part(p, quick=quick, echo=echo)),
        (
            "images",
            lambda p: images_part(p, quick=quick, echo=echo, generations=image_generations),
        ),
    ]
    for name, step in steps:
        echo(f"demo: {name} ...")
        note = step(out / name)
        if note:
            echo(f"demo: {note}")
            notes.append(note)
    report = build_report(
        out,
        out / "report.html",
        title="madloop demo: model autophagy disorder, measured",
        figures=out / "figures",
        notes=[*notes, f"demo total {time.perf_counter() - t0:.0f} s"],
    )
    size = report.stat().st_size / 1e6
    echo(f"demo: report {size:.1f} MB, {time.perf_counter() - t0:.0f} s in all")
    if size > MAX_REPORT_MB:
        echo(f"demo: warning: the report is over {MAX_REPORT_MB} MB (large sample galleries?)")
    return report
