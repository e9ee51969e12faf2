"""The ``madloop`` command: parses arguments into configs and calls experiment / sweep / report.

Bad input gets one line per problem and exit status 2, never a traceback. Every heavy import
(the config schema and pydantic, pandas, numpy's users, rich's tables and progress bars, the
experiment, the report) happens inside the command that needs it, so ``madloop --help`` and
``madloop validate`` start fast.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from madloop.storage.files import StorageFull

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Simulate, measure and explain self-consuming (autophagous) training loops.",
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
console = Console()


def fail(problems: list[str], code: int = 2) -> None:
    for line in problems:
        err.print(f"[red]error[/red]: {escape(line)}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def note_exact_fallback(arms: list) -> None:
    """Say which arms ask for ``exact`` but run in ``sample`` (their regime has no exact law)."""
    from madloop.capabilities import exact_mode, exact_requested
    from madloop.config import make_regime

    for arm in arms:
        c = arm.config
        regime = make_regime(c.loop)
        if exact_requested(c.model) and not exact_mode(c.model, regime):
            why = getattr(regime, "sample_reason", None) or (
                f"regime '{c.loop.regime}' has no exact simulation (a subsample is not a "
                "function of sufficient statistics)"
            )
            err.print(
                f"note: arm {escape(arm.name)}: {why}; it runs in sample mode",
                highlight=False,
                soft_wrap=True,
            )


class LazyProgress:
    """The one progress bar every long command shows (on stderr, with an ETA). It appears only
    once the work has started (:meth:`begin`), so a command refused before it ran (a config
    error, a locked directory) prints no bar."""

    def __init__(self, quiet: bool) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err,
            disable=quiet,
        )
        self.task: Any = None

    def __enter__(self) -> LazyProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.task is not None:
            self.bar.stop()

    def begin(self, description: str, total: int, completed: int = 0) -> None:
        """Show the bar (once); later calls reset it, e.g. when a resume reuses finished work."""
        if self.task is None:
            self.bar.start()
            self.task = self.bar.add_task(description, total=total, completed=completed)
        else:
            self.bar.reset(self.task, total=total, completed=completed, description=description)

    def advance(self, description: str) -> None:
        self.bar.update(self.task, advance=1, description=description)


def progress_bar(quiet: bool) -> LazyProgress:
    return LazyProgress(quiet)


ConfigArg = Annotated[Path, typer.Argument(help="Experiment config (TOML).", show_default=False)]


FiguresOpt = Annotated[
    Path | None,
    typer.Option("--figures", help="Also write every figure into this folder (see --format)."),
]
FormatOpt = Annotated[
    str, typer.Option("--format", help="Format of the --figures files: png, svg or pdf.")
]
FIGURE_FORMATS = ("png", "svg", "pdf")  # as madloop.report.plots.FIGURE_FORMATS


def check_figure_format(fmt: str) -> None:
    """--format names a format the figure writers know (checked before any work is done)."""
    if fmt not in FIGURE_FORMATS:
        fail([f"--format: {fmt!r} is not a figure format; use one of {', '.join(FIGURE_FORMATS)}"])


ImportOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--import",
        help="A Python file or module that registers your own families (madloop.register_family)"
        "; repeatable. A config never names code.",
    ),
]


def import_user_code(targets: list[str] | None) -> None:
    """Import each ``--import`` file or module (its registrations), or fail naming it."""
    if not targets:
        return
    from madloop.config import ConfigError
    from madloop.models.contract import import_user_code as load

    try:
        for target in targets:
            load(target)
    except ConfigError as e:
        fail(e.problems)


@app.command("run")
def run_cmd(
    config: ConfigArg,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run directory.")] = None,
    seed: Annotated[int | None, typer.Option(help="Override the config's seed.")] = None,
    generations: Annotated[int | None, typer.Option(help="Override generations.")] = None,
    replicates: Annotated[int | None, typer.Option(help="Override replicates.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the run directory's checkpoints.")
    ] = False,
    keep_checkpoints: Annotated[
        int, typer.Option("--keep-checkpoints", help="Checkpoints kept per arm.", min=1)
    ] = 2,
    checkpoint_every: Annotated[
        int | None,
        typer.Option(
            "--checkpoint-every",
            help="Checkpoint every K generations [default: after the first, then whenever 20x "
            "the last checkpoint's time has passed, so checkpoints cost at most 5% of a run].",
            min=1,
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the memory and disk estimate and exit.")
    ] = False,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Skip plots/.")] = False,
    figures: FiguresOpt = None,
    fmt: FormatOpt = "png",
    imports: ImportOpt = None,
    track: Annotated[
        str | None,
        typer.Option(
            "--track",
            help="Log the finished run to this tracker (mlflow, or wandb offline) like [tracking].",
        ),
    ] = None,
    track_uri: Annotated[
        str | None,
        typer.Option(help="Tracking server or folder [default: the config's, else ./mlflow.db]."),
    ] = None,
) -> None:
    """Run every arm of CONFIG and write metrics.parquet, summary.csv, manifest.json, plots/."""
    plots = (not no_plots or figures is not None) and not dry_run
    from madloop.report.plot_worker import drawing_process, write_plots

    with drawing_process(plots) as worker:  # started first: it loads matplotlib meanwhile
        from madloop import resources, tracking
        from madloop.config import ConfigError, parse
        from madloop.experiment import run

        import_user_code(imports)
        check_figure_format(fmt)
        try:
            base, arms = parse(config, seed=seed, generations=generations, replicates=replicates)
            tracked = tracking.resolve(base.tracking, name=base.name, backend=track, uri=track_uri)
        except ConfigError as e:
            fail(e.problems)
        out = out or Path("runs") / base.name
        note_exact_fallback(arms)
        estimate = resources.estimate(arms, keep_checkpoints=keep_checkpoints)
        if dry_run:
            for line in estimate.lines():
                console.print(line, highlight=False, soft_wrap=True)
            console.print(
                f"available: memory {resources.human(resources.available_memory())}, disk "
                f"{resources.human(resources.free_disk(out))} under {out}",
                highlight=False,
                soft_wrap=True,
            )
            for line in resources.problems(estimate, out):
                console.print(f"would be refused: {line}", highlight=False, soft_wrap=True)
            return
        too_big = resources.problems(estimate, out)
        if too_big:
            fail(too_big + estimate.lines())
        total = sum(a.config.generations for a in arms)
        with progress_bar(quiet) as bar:

            def progress(arm: str, generation: int, generations: int) -> None:
                if bar.task is None:
                    bar.begin(base.name, total=total)
                bar.advance(f"{base.name} [{arm}] gen {generation}")

            def note(message: str) -> None:
                err.print(f"[yellow]note[/yellow]: {message}", highlight=False, soft_wrap=True)

            try:
                result = run(
                    config,
                    out=out,
                    seed=seed,
                    generations=generations,
                    replicates=replicates,
                    progress=progress,
                    resume=resume,
                    keep_checkpoints=keep_checkpoints,
                    checkpoint_every=checkpoint_every,
                    log=note,
                    on_summary=worker.submit_with(figures, fmt) if worker else None,
                )
            except ConfigError as e:
                fail(e.problems)
        if plots:

            def why(e: str) -> None:
                err.print(
                    f"[yellow]note[/yellow]: drawing here instead ({escape(e)})", soft_wrap=True
                )

            write_plots(result, figures, fmt, worker, say=why)
        if not quiet:
            console.print(last_generation_table(base.name, result.table("summary")))
        console.print(f"wrote {out}")
        if tracked is not None:
            try:
                run_id = tracking.log_run(result, tracked)
            except Exception as e:  # the run directory is whole; only the tracker's copy failed
                where = f"{tracked.backend} at {tracked.uri}"
                fail([f"tracking: {where} failed ({e}); {out} is whole"], 1)
            done = f"tracked: {tracked.backend} run {run_id} in {tracked.uri}"
            console.print(done, highlight=False)


def last_generation_table(name: str, summary: Any) -> Any:
    """The summary's last generation as a rich table (arm, metric, mean, std_error, theory);
    ``summary`` a :class:`madloop.tables.Table` (a run's, read without pandas)."""
    import numpy as np
    from rich.table import Table

    generation = np.asarray(summary.column("generation"), dtype=np.int64)
    last = np.flatnonzero(generation == generation.max()) if generation.size else generation
    title = f"generation {int(generation.max())}" if last.size else "no metric applies"
    table = Table(title=f"{name}: {title}", box=None)
    for col in ("arm", "metric", "mean", "std_error", "theory"):
        table.add_column(col, justify="left" if col in ("arm", "metric") else "right")
    arm, metric = summary.column("arm"), summary.column("metric")
    mean, se, theory = (
        np.asarray(summary.column(c), float) for c in ("mean", "std_error", "theory")
    )
    for i in last:
        th = "-" if np.isnan(theory[i]) else f"{theory[i]:.4g}"
        table.add_row(str(arm[i]), str(metric[i]), f"{mean[i]:.4g}", f"{se[i]:.2g}", th)
    return table


@app.command("theory")
def theory_cmd(
    config: ConfigArg,
    generations: Annotated[int | None, typer.Option(help="Override generations.")] = None,
    every: Annotated[int, typer.Option(help="Print every k-th generation.")] = 0,
) -> None:
    """Print the closed-form predictions for each arm of CONFIG."""
    import numpy as np
    from rich.table import Table

    from madloop.config import ConfigError, parse
    from madloop.experiment import theory_frame

    try:
        _, arms = parse(config, generations=generations)
    except ConfigError as e:
        fail(e.problems)
    frame = theory_frame(arms)
    if frame.empty:
        from madloop.theory import PREDICTORS

        known = ", ".join(sorted(PREDICTORS))
        console.print(
            f"no closed-form theory applies to this config (theories: {known}; see madloop.theory)"
        )
        return
    wide = frame.pivot_table(index=["arm", "generation"], columns="metric", values="theory")
    wide = wide.reset_index()
    order = {a.name: i for i, a in enumerate(arms)}  # arms in config order, not alphabetical
    wide = wide.sort_values(
        ["arm", "generation"], key=lambda c: c.map(order) if c.name == "arm" else c
    )
    T = int(wide["generation"].max())
    step = every or max(1, T // 10)
    keep = (wide["generation"] % step == 0) | (wide["generation"] == 1) | (wide["generation"] == T)
    table = Table(title="E[metric] by generation (closed form)", box=None)
    for col in wide.columns:
        table.add_column(str(col), justify="right")
    for row in wide[keep].itertuples(index=False):
        table.add_row(
            *(("-" if np.isnan(v) else f"{v:.6g}") if isinstance(v, float) else str(v) for v in row)
        )
    console.print(table)
    from madloop.theory.gaussian import real_weight_note

    for arm in arms:  # fresh-data arms with a known covariance: the golden-ratio weight
        if note := real_weight_note(arm.config):
            console.print(f"{arm.name}: {note}")


@app.command("report")
def report_cmd(
    directory: Annotated[
        Path,
        typer.Argument(help="A run or sweep directory, or a folder of them.", show_default=False),
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="HTML file [default: DIR/report.html].")
    ] = None,
    figures: FiguresOpt = None,
    fmt: FormatOpt = "png",
    k: Annotated[
        float | None,
        typer.Option("--k", help="Flag departures from theory beyond k standard errors."),
    ] = None,
) -> None:
    """Write one self-contained HTML page (figures inline, no network) for DIRECTORY."""
    from madloop.report.html import ReportError, build_report

    check_figure_format(fmt)
    try:
        path = build_report(directory, out, figures=figures, cutoff=k, fmt=fmt)
    except ReportError as e:
        fail([str(e)])
    console.print(f"wrote {path}")


@app.command("demo")
def demo_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Demo folder.")] = Path("runs/demo"),
    quick: Annotated[bool, typer.Option(help="Tiny sizes (for tests): seconds, not minutes.")] = (
        False
    ),
    image_generations: Annotated[
        int, typer.Option(min=1, help="Generations of the image loop (when it runs).")
    ] = 4,
) -> None:
    """Run the flagship study (each part whose modules exist) and write OUT/report.html."""
    from madloop.demo import run_demo

    report = run_demo(
        out,
        quick=quick,
        image_generations=image_generations,
        echo=lambda line: err.print(line, highlight=False, markup=False),
    )
    console.print(str(report), highlight=False, markup=False, soft_wrap=True)


@app.command("validate")
def validate_cmd(config: ConfigArg, imports: ImportOpt = None) -> None:
    """Check CONFIG and list its arms without running anything."""
    from madloop.config import ConfigError, parse

    import_user_code(imports)
    try:
        _, arms = parse(config)
    except ConfigError as e:
        fail(e.problems)
    note_exact_fallback(arms)
    for arm in arms:
        c = arm.config
        console.print(
            f"{arm.name}: {c.loop.regime}, {c.model.family} on {c.data.source}, "
            f"{c.bias_text()}, {c.generations} generations x {c.replicates} replicates",
            soft_wrap=True,  # one line per arm, whatever the terminal's width
        )
    if arms[0].config.sweep is not None:
        from madloop.sweeps import plan

        try:
            p = plan(config)
        except ConfigError as e:
            fail(e.problems)
        console.print(
            f"sweep: {len(p.tasks) // p.seeds} points x {p.seeds} seeds = {len(p.tasks)} tasks"
        )


@app.command("sweep")
def sweep_cmd(
    config: ConfigArg,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Sweep directory (default: runs/NAME-sweep).")
    ] = None,
    executor: Annotated[
        str | None,
        typer.Option(
            help="local (process pool), ray or serial (default local; ray with --address)."
        ),
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (e.g. HOST:6379 or auto).")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Processes / local Ray CPUs / tasks at once on a cluster."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume/--fresh", help="Skip finished tasks, or start over.")
    ] = True,
    generation: Annotated[
        int | None, typer.Option(min=1, help="Phase diagrams at this generation (default: last).")
    ] = None,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Phase diagrams.")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    figures: FiguresOpt = None,
    fmt: FormatOpt = "png",
    imports: ImportOpt = None,
) -> None:
    """Run the grid x seeds of CONFIG's sweep table; write results.parquet, theory.parquet,
    sweep.json, tasks/ (one Parquet file per task) and plots/ (phase diagrams).
    Exit 1 if a task failed."""
    from madloop.config import ConfigError
    from madloop.executors import EXECUTORS
    from madloop.sweeps import plan, sweep

    import_user_code(imports)
    check_figure_format(fmt)
    kind = executor or ("ray" if address else "local")
    if kind not in EXECUTORS:
        fail([f"--executor: unknown executor {kind!r} (available: {', '.join(EXECUTORS)})"])
    if address and kind != "ray":
        fail([f"--address: only the ray executor connects to a cluster (got --executor {kind})"])
    try:
        p = plan(config)
    except ConfigError as e:
        fail(e.problems)
    for line in p.warnings:
        err.print(f"[yellow]warning[/yellow]: {line}", highlight=False)
    with progress_bar(quiet) as bar:
        failed = 0

        def on_start(plan_: object, to_run: int) -> None:
            # the reused tasks start the bar as completed: they must not count towards the ETA
            bar.begin(p.name, total=len(p.tasks), completed=len(p.tasks) - to_run)

        def progress(result: object, done: int, to_run: int) -> None:
            nonlocal failed
            failed += 0 if getattr(result, "ok", True) else 1
            note = f", [red]{failed} failed[/red]" if failed else ""
            bar.advance(f"{p.name}{note}")

        try:
            result = sweep(
                config,
                out=out,
                executor=kind,
                workers=workers,
                address=address,
                resume=resume,
                progress=progress,
                on_start=on_start,
            )
        except (ImportError, ConnectionError) as e:  # no Ray, or no cluster at --address
            fail([str(e)])
    if plots or figures is not None:
        result.write_plots(generation, figures, fmt)
    if result.manifest["stale_tasks"]:
        err.print(
            f"[yellow]note[/yellow]: {len(result.manifest['stale_tasks'])} task directories in "
            f"{result.out / 'tasks'} belong to no task of this sweep (an older grid or config); "
            "results.parquet leaves them out, a glob over tasks/ does not (--fresh removes them)",
            highlight=False,
        )
    for tid, message in result.errors.items():
        err.print(f"[red]task failed[/red] {tid}: {message}", highlight=False, soft_wrap=True)
    counts = ", ".join(
        f"{n} {s}"
        for s in ("done", "reused", "failed")
        if (n := sum(v == s for v in result.status.values()))
    )
    console.print(f"{len(result.status)} tasks ({counts}); wrote {result.out}")
    if result.errors:
        raise typer.Exit(1)


@app.command("reproduce")
def reproduce_cmd(
    name: Annotated[
        str | None, typer.Argument(help="A study (see --list).", show_default=False)
    ] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the studies and exit.")] = False,
    all_: Annotated[bool, typer.Option("--all", help="Run every study.")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="The studies' quick sizes.")] = False,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Directory [default: runs/reproduce].")
    ] = None,
    markdown: Annotated[
        Path | None, typer.Option(help="The markdown table [default: OUT/reproductions.md].")
    ] = None,
) -> None:
    """Run a study of the literature and compare it with the paper (closed forms or the paper's
    numbers): writes OUT/comparison.csv, OUT/figures/, OUT/reproductions.md. Exit 1 if a row
    disagrees; `madloop report OUT` shows the comparison first."""
    from madloop.config import ConfigError
    from madloop.reproduce import load_study, reproduce, study_names

    names = study_names()
    if list_:
        for study in names:
            try:
                info = load_study(study).study
            except ConfigError as e:
                fail(e.problems)
            console.print(
                f"{info.name}: {info.paper}; checks {info.checks} "
                f"(quick ~{info.minutes:g} min)",
                highlight=False, markup=False, soft_wrap=True,
            )  # fmt: skip
        return
    if (name is None) == (not all_):
        fail([f"give one study NAME or --all (the studies: {', '.join(names)})"])
    chosen = names if all_ else [name]
    try:
        result = reproduce(
            chosen, out or Path("runs/reproduce"), quick=quick, markdown=markdown,
            log=lambda m: err.print(m, highlight=False, markup=False, soft_wrap=True),
        )  # fmt: skip
    except ConfigError as e:
        fail(e.problems)
    for o in result.outcomes:
        bad = o.comparison[~o.comparison["agrees"]]
        verdict = "[green]agrees[/green]" if o.agrees else f"[red]{len(bad)} disagree[/red]"
        console.print(f"{o.study.name}: {len(o.comparison)} rows, {verdict} ({o.seconds:.0f} s)")
        for r in bad.itertuples():
            console.print(
                f"  {escape(r.quantity)} (gen {r.generation}): measured {r.measured:.4g} "
                f"± {r.std_error:.2g}, reference {r.reference:.4g}, tolerance {r.tolerance:.2g}",
                highlight=False, soft_wrap=True,
            )  # fmt: skip
    console.print(f"wrote {result.out} (madloop report {result.out})")
    if not result.agrees:
        raise typer.Exit(1)


def main() -> None:
    try:
        app()
    except StorageFull as e:  # the disk filled: what was written before stays valid
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:
        # a ConfigError raised from deep inside a command; its module is loaded if one was
        errors = sys.modules.get("madloop.config.errors")
        if errors is None or not isinstance(e, errors.ConfigError):
            raise
        for line in e.problems:
            print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
    finally:  # exit without the last garbage collections over every object the libraries
        gc.freeze()  # made (0.15-0.25 s of a command's exit); atexit handlers still run


if __name__ == "__main__":
    main()
