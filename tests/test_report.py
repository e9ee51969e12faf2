"""`madloop report`: the page of a tiny run, a tiny sweep and a folder of both, checked as HTML and
in headless Chromium (Debian's `chromium` through Playwright); the demo-sized page's size and that
it fetches nothing; the plain-language findings on known cases."""

from __future__ import annotations

import copy
import importlib.util
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from madloop.cli import app
from madloop.data.gaussian import GaussianSource
from madloop.experiment import run
from madloop.report import findings as fnd
from madloop.report.html import build_report, kind_of

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(__file__).parent / "artifacts"  # screenshots land here (gitignored)
NETWORK = re.compile(
    r"""(?:src|href|action)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?https?:|@import""", re.I
)

TINY = {
    "name": "tiny",
    "seed": 3,
    "generations": 6,
    "replicates": 24,
    "data": {"source": "gaussian", "dim": 3},
    "model": {"family": "gaussian", "mode": "exact"},
    "sampling": {"bias": 1.0},
    "loop": {"regime": "fully-synthetic", "real_size": 0, "synthetic_size": 20},
    "arms": [
        {"name": "truncated", "sampling.bias": 0.7},
        {
            "name": "fresh",
            "loop.regime": "fresh-data",
            "loop.real_size": 10,
            "loop.synthetic_size": 10,
        },
    ],
}


def _render_samples(self: GaussianSource, points, stem: Path) -> list[Path]:
    """A 2-D scatter over the real density and a text excerpt: what a source's optional
    ``render_samples`` writes, here for the Gaussian so the gallery path runs end to end."""
    import matplotlib.pyplot as plt

    X = points.global_X()[0]
    fig, ax = plt.subplots(figsize=(2.4, 2.4), dpi=60)
    g = np.linspace(-4, 4, 60)
    xx, yy = np.meshgrid(g, g)
    ax.contourf(xx, yy, np.exp(-(xx**2 + yy**2) / 2), levels=6, cmap="Greys")
    ax.scatter(X[:, 0], X[:, 1], s=3, c="C3")
    ax.set(xlim=(-4, 4), ylim=(-4, 4), xticks=[], yticks=[])
    png, txt = stem.with_suffix(".png"), stem.with_suffix(".txt")
    fig.savefig(png)
    plt.close(fig)
    txt.write_text("\n".join(" ".join(f"{v:+.3f}" for v in row) for row in X[:12]))
    return [png, txt]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "tiny"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(GaussianSource, "render_samples", _render_samples, raising=False)
        run(TINY, out=out)
    assert sorted(p.name for p in (out / "plots" / "samples").glob("*_gen001.*")) == [
        "base_gen001.png",
        "base_gen001.txt",
        "fresh_gen001.png",
        "fresh_gen001.txt",
        "truncated_gen001.png",
        "truncated_gen001.txt",
    ]
    return out


GRID = {"loop.real_size": [4, 10, 40], "sampling.bias": [0.8, 0.9, 1.0]}
SEEDS = [0, 1]
SWEEP_BASE = {
    "name": "phase",
    "seed": 11,
    "generations": 8,
    "replicates": 16,
    "data": {"source": "gaussian", "dim": 3},
    "model": {"family": "gaussian", "mode": "exact"},
    "loop": {"regime": "fresh-data", "real_size": 0, "synthetic_size": 40},
}


def _set(config: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    node = config
    for p in path:
        node = node.setdefault(p, {})
    node[last] = value


def _fake_sweep(out: Path) -> Path:
    """A sweep directory by the contract (results.parquet, theory.parquet, sweep.json), each task
    a real `run` of the grid point, for branches without `madloop.sweeps`."""
    results, theory, tasks = [], [], []
    for values in itertools.product(*GRID.values()):
        for seed in SEEDS:
            cfg = copy.deepcopy(SWEEP_BASE)
            cfg["seed"] = SWEEP_BASE["seed"] * 1000 + seed
            point = dict(zip(GRID, values, strict=True))
            for k, v in point.items():
                _set(cfg, k, v)
            t0 = time.perf_counter()
            res = run(cfg)
            m = res.metrics.assign(seed=seed, **point)
            th = res.summary.dropna(subset=["theory"])[["arm", "generation", "metric", "theory"]]
            results.append(m)
            theory.append(th.assign(seed=seed, **point))
            tasks.append(
                {
                    "id": len(tasks),
                    **point,
                    "seed": seed,
                    "status": "done",
                    "error": None,
                    "seconds": round(time.perf_counter() - t0, 3),
                }
            )
    out.mkdir(parents=True)
    cols = [*GRID, "seed", "arm", "generation", "replicate", "metric", "value"]
    pd.concat(results)[cols].to_parquet(out / "results.parquet", index=False)
    tcols = [*GRID, "seed", "arm", "generation", "metric", "theory"]
    pd.concat(theory)[tcols].to_parquet(out / "theory.parquet", index=False)
    meta = {"base": SWEEP_BASE, "grid": GRID, "seeds": len(SEEDS), "tasks": tasks}
    (out / "sweep.json").write_text(json.dumps(meta))
    return out


def _real_sweep(out: Path) -> Path:
    toml = [f"{k} = {json.dumps(v)}" for k, v in SWEEP_BASE.items() if not isinstance(v, dict)]
    for table in ("data", "model", "loop"):
        toml += [f"[{table}]"] + [f"{k} = {json.dumps(v)}" for k, v in SWEEP_BASE[table].items()]
    toml += ["[sweep]", f"seeds = {len(SEEDS)}", "[sweep.grid]"]
    toml += [f'"{k}" = {json.dumps(v)}' for k, v in GRID.items()]
    config = out.parent / "phase.toml"
    config.write_text("\n".join(toml) + "\n")
    cmd = [sys.executable, "-m", "madloop.cli", "sweep", str(config), "--out", str(out)]
    done = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "MPLBACKEND": "Agg"}
    )
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "phase"
    if importlib.util.find_spec("madloop.sweeps") is not None:
        return _real_sweep(out)
    return _fake_sweep(out)


@pytest.fixture(scope="module")
def collection(tmp_path_factory, tiny_run, tiny_sweep) -> Path:
    root = tmp_path_factory.mktemp("demo")
    shutil.copytree(tiny_run, root / "gaussian")
    shutil.copytree(tiny_sweep, root / "phase")
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_run, tiny_sweep, collection) -> dict[str, tuple[Path, Path]]:
    """Each page built once: kind -> (report.html, its figures folder)."""
    root = tmp_path_factory.mktemp("pages")
    out = {}
    for kind, source in (("run", tiny_run), ("sweep", tiny_sweep), ("folder", collection)):
        figs = root / f"{kind}-figures"
        out[kind] = (build_report(source, root / f"{kind}.html", figures=figs), figs)
    return out


def _sections(page: str) -> list[str]:
    return re.findall(r'data-section="([a-z]+)"', page)


# -- the page as HTML -----------------------------------------------------------------------------
def test_run_report_has_every_part(tiny_run, built):
    out, figs = built["run"]
    page = out.read_text()
    assert _sections(page) == ["summary", "metrics", "galleries", "config"]
    # one curve per metric, inline; galleries: three arms, images and text excerpts
    metrics = pd.read_csv(tiny_run / "summary.csv")["metric"].unique()
    assert sorted(p.stem for p in figs.glob("*.png")) == sorted(f"tiny-{m}" for m in metrics)
    assert page.count('<div class="gallery"') == 3
    assert page.count('<pre class="excerpt">') == 3 * 5  # generations 1, 2, 3, 5, 6
    assert "generation 1</figcaption>" in page and "generation 6</figcaption>" in page
    # provenance and the resolved config
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    assert f"<td>{manifest['git_commit']}</td>" in page or manifest["git_commit"] is None
    assert "seed = 3" in page and "loop.regime = &#34;fresh-data&#34;" in page
    assert re.search(r'badge (collapsed|collapsing)">[a-z]+</span> <strong>truncated', page)
    assert not NETWORK.search(page)


def test_sweep_report_has_phase_diagrams(tiny_sweep, built):
    out, figs = built["sweep"]
    page = out.read_text()
    assert _sections(page) == ["summary", "phase", "tasks", "config"]
    metrics = pd.read_parquet(tiny_sweep / "results.parquet")["metric"].unique()
    assert len(list(figs.glob("*-phase-*.png"))) == len(metrics)
    assert "Dashed white contours: the theory" in page
    assert "of 9 grid points" in page  # the collapse sentence counts the grid
    assert not NETWORK.search(page)


def test_folder_of_parts_is_one_page(collection, built):
    assert kind_of(collection) == "collection"
    page = built["folder"][0].read_text()
    assert 'id="gaussian"' in page and 'id="phase"' in page
    assert _sections(page).count("summary") == 2


def test_cli_report_and_bad_directory(tiny_run, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["report", str(tiny_run), "-o", str(tmp_path / "x.html")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "x.html").stat().st_size > 10_000
    # a cut-off of 0.01 standard errors flags (nearly) every comparison with theory
    res = runner.invoke(
        app, ["report", str(tiny_run), "-o", str(tmp_path / "k.html"), "--k", "0.01"]
    )
    assert res.exit_code == 0, res.output
    assert "k = 0.01 standard errors" in (tmp_path / "k.html").read_text()
    assert 'class="data flags"' in (tmp_path / "k.html").read_text()
    res = runner.invoke(app, ["report", str(tmp_path / "nothing")])
    assert res.exit_code == 2
    assert "no such directory" in res.output
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["report", str(tmp_path / "empty")])
    assert res.exit_code == 2 and "not a run directory" in res.output


# -- in a real browser ----------------------------------------------------------------------------
def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _open_in_browser(page_path: Path, shot: Path) -> dict:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    exe = _chromium()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing on CI: .ci/run should have installed it")
        pytest.skip("Debian's chromium is not installed here (.ci/run installs it)")
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 900}, offline=True)
        page = context.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(page_path.resolve().as_uri(), wait_until="load")
        info = page.evaluate(
            """() => ({
                images: Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth]),
                sections: Array.from(document.querySelectorAll('section[data-section]'))
                    .map(s => [s.dataset.section, s.getBoundingClientRect().height]),
                title: document.title,
            })"""
        )
        # zoom works: a click opens the overlay with the same picture, Escape closes it
        first = page.locator("main figure img").first
        first.click()
        assert page.locator("#zoom").is_visible()
        page.keyboard.press("Escape")
        assert not page.locator("#zoom").is_visible()
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    info["errors"] = errors
    info["requests"] = [u for u in requests if not u.startswith(("file:", "data:"))]
    return info


@pytest.mark.parametrize("which", ["run", "sweep", "folder"])
def test_report_in_headless_chromium(which, built):
    info = _open_in_browser(built[which][0], ARTIFACTS / f"report-{which}.png")
    assert info["errors"] == []
    assert info["requests"] == []
    assert info["images"], "the page has no image"
    undecoded = [alt for alt, complete, width in info["images"] if not (complete and width > 0)]
    assert undecoded == []
    expected = {
        "run": {"summary", "metrics", "galleries", "config"},
        "sweep": {"summary", "phase", "tasks", "config"},
        "folder": {"summary", "metrics", "galleries", "phase", "tasks", "config"},
    }[which]
    shown = {name for name, height in info["sections"] if height > 0}
    assert shown == expected
    assert (ARTIFACTS / f"report-{which}.png").stat().st_size > 10_000


# -- the demo -------------------------------------------------------------------------------------
def test_demo_sized_report_is_small_and_offline(tmp_path):
    out = tmp_path / "gaussian"
    run(ROOT / "examples" / "mad-gaussian.toml", out=out)
    page = build_report(out, tmp_path / "report.html").read_text()
    assert len(page.encode()) < 10_000_000
    assert not NETWORK.search(page)
    assert "http://" not in page and "https://" not in page
    # the study's known outcome, in words: λ < 1 collapses, fresh data holds, λ = 1 degenerates
    assert re.search(r'badge collapsed">collapsed</span> <strong>truncated', page)
    assert re.search(r'badge stable">stable</span> <strong>fresh', page)
    assert re.search(r'badge collapsing">collapsing</span> <strong>base', page)


def test_quick_demo_writes_one_page(tmp_path):
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--quick"])
    assert res.exit_code == 0, res.output
    report = tmp_path / "demo" / "report.html"
    assert str(report) in res.output.replace("\n", "")
    page = report.read_text()
    assert 'id="gaussian"' in page
    assert (tmp_path / "demo" / "figures" / "gaussian-trace_ratio.png").exists()


# -- findings on known cases ----------------------------------------------------------------------
def _summary(arm: str, metric: str, mean, theory=None, se=0.01, median=None) -> pd.DataFrame:
    mean = np.asarray(mean, float)
    gens = np.arange(1, mean.size + 1)
    return pd.DataFrame(
        {
            "arm": arm,
            "generation": gens,
            "metric": metric,
            "mean": mean,
            "std_error": se,
            "median": mean if median is None else median,
            "q05": mean * 0.9,
            "q95": mean * 1.1,
            "n": 100,
            "theory": np.nan if theory is None else np.asarray(theory, float),
        }
    )


def test_cutoff_is_bonferroni():
    assert fnd.theory_cutoff(1) == 3.0  # never below 3
    k = fnd.theory_cutoff(1000)
    # P(|Z| > k) summed over 1000 tests is the family-wise 1%
    from scipy.stats import norm

    assert 1000 * 2 * norm.sf(k) == pytest.approx(0.01, rel=1e-9)


def test_departures_flag_only_what_is_off():
    gens = 20
    theory = 0.9 ** np.arange(gens)
    off = theory.copy()
    off[12] += 0.2  # 20 standard errors at generation 13
    s = pd.concat(
        [
            _summary("good", "trace_ratio", theory + 0.01, theory),  # 1 s.e. away everywhere
            _summary("bad", "trace_ratio", off, theory),
        ]
    )
    found = fnd.findings(s)
    assert found.comparisons == 2 * gens
    flagged = {d.arm: d for d in found.flagged}
    assert set(flagged) == {"bad"}
    assert flagged["bad"].flagged == 1 and flagged["bad"].worst_generation == 13
    assert flagged["bad"].worst_z == pytest.approx(20.0)


def test_verdicts_and_rates():
    gens = np.arange(1, 31)
    halving = _summary("a", "trace_ratio", 0.9 ** (gens - 1))
    arm = fnd.arm_finding("a", halving)
    assert arm.verdict == "collapsed"
    assert arm.halving_generation == 8  # 0.9^7 = 0.478 is the first value <= 0.5
    ld = pd.concat(
        [
            _summary("b", "trace_ratio", np.ones(30)),
            _summary("b", "log_det_change", -0.5 * gens),
        ]
    )
    b = fnd.arm_finding("b", ld)
    assert b.verdict == "collapsing" and b.log_det_slope == pytest.approx(-0.5)
    steady = pd.concat(
        [
            _summary("c", "trace_ratio", np.ones(30)),
            _summary("c", "log_det_change", np.full(30, -0.7)),
        ]
    )
    assert fnd.arm_finding("c", steady).verdict == "stable"
    recall = _summary("d", "recall", np.linspace(0.8, 0.2, 30))
    assert fnd.arm_finding("d", recall).verdict == "collapsed"


# -- phase-diagram cells and other shapes of input -------------------------------------------------
def _results(keys: dict[str, list], seeds=(0, 1), replicates=3) -> pd.DataFrame:
    rows = []
    for values in itertools.product(*keys.values()):
        for seed in seeds:
            for r in range(replicates):
                # value = seed + replicate / 10 + position: cell mean = 0.5 + 0.1 + position
                pos = sum(
                    i * 10**j
                    for j, i in enumerate(
                        [list(v).index(x) for v, x in zip(keys.values(), values, strict=True)]
                    )
                )
                rows.append(
                    {
                        **dict(zip(keys, values, strict=True)),
                        "seed": seed,
                        "arm": "base",
                        "generation": 4,
                        "replicate": r,
                        "metric": "trace_ratio",
                        "value": seed + r / 10 + pos,
                    }
                )
    return pd.DataFrame(rows)


def test_cells_average_replicates_and_seeds():
    from madloop.report import phase

    res = _results({"loop.real_size": [0, 10], "loop.regime": ["fresh-data", "accumulate"]})
    assert phase.swept_keys(res) == ["loop.real_size", "loop.regime"]
    assert phase.swept_keys(res, ["loop.regime", "loop.real_size"]) == [
        "loop.regime",
        "loop.real_size",
    ]
    cells = phase.cell_means(res, "trace_ratio", ["loop.real_size", "loop.regime"], 4)
    got = cells.set_index(["loop.real_size", "loop.regime"])["mean"]
    assert got[(0, "fresh-data")] == pytest.approx(0.6)
    assert got[(10, "accumulate")] == pytest.approx(0.6 + 11)
    assert set(cells["n"]) == {6}
    # categorical and numeric keys, one key, three keys: each draws
    phase.plot_phase(res, None, "trace_ratio", ["loop.regime", "loop.real_size"], 4)
    phase.plot_line(res, None, "trace_ratio", "loop.regime", 4)


def test_three_keys_average_the_third(tmp_path):
    res = _results({"a.x": [1, 2], "a.y": [1, 2, 3], "a.z": [0.1, 0.2]})
    sweep = tmp_path / "s"
    sweep.mkdir()
    res.to_parquet(sweep / "results.parquet")
    tasks = {"t1": {"status": "done"}, "t2": {"status": "failed", "error": "x" * 1000}}
    (sweep / "sweep.json").write_text(
        json.dumps({"grid": {"a.x": [1, 2], "a.y": [1, 2, 3], "a.z": [0.1, 0.2]}, "tasks": tasks})
    )
    page = build_report(sweep).read_text()
    assert "averaging over a.z" in page
    assert "1 failed" in page and "x" * 239 + "…" in page and "x" * 241 not in page
    assert "No theory.parquet" in page


def test_run_without_manifest_or_summary(tiny_run, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(tiny_run / "metrics.parquet", bare / "metrics.parquet")
    page = build_report(bare).read_text()
    assert _sections(page) == ["summary", "metrics", "config"]
    assert "No closed-form theory" in page


def test_gallery_picks_first_last_and_between():
    from madloop.report.gallery import pick_generations

    assert pick_generations([1, 2, 3]) == [1, 2, 3]
    picks = pick_generations([1, 2, 3, 5, 7, 10, 20, 50, 100])
    assert picks[0] == 1 and picks[-1] == 100 and len(picks) <= 6 and picks == sorted(picks)


def test_report_reads_directories_not_the_loop():
    """The report is made from files: it imports neither the loop, the experiment nor sweeps."""
    for name in ("html.py", "parts.py", "gallery.py", "findings.py", "phase.py", "plots.py"):
        path = ROOT / "src" / "madloop" / "report" / name
        source = path.read_text()
        for module in ("madloop.loop", "madloop.experiment", "madloop.sweeps"):
            assert module not in source, f"{path.name} imports {module}"


def test_foreign_summary_with_few_columns(tmp_path):
    """A summary.csv with only arm, generation, metric, mean (another tool's): still a page."""
    (tmp_path / "summary.csv").write_text(
        "arm,generation,metric,mean\na,1,recall,0.8\na,2,recall,0.5\na,3,recall,0.3\n"
    )
    page = build_report(tmp_path).read_text()
    assert "1 arm(s), 3 generations." in page
    assert 'badge collapsed">collapsed</span> <strong>a</strong>' in page
