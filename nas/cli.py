"""The ``nas`` command: run | worker | front | finalize | export | report | compare | dashboard |
doctor | spaces | objectives | techniques.

Bad input prints one line (``error: <what is wrong>; <the fix>``) to stderr and exits with 2.
"""

from __future__ import annotations

import errno
import json
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import TextIO

import click

from nas.errors import NasError, NasWarning


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nas")
def cli() -> None:
    """Search for efficient neural networks: architecture + compression, Pareto front, export.

    \b
      nas run experiments/fashion_mnist.yaml --workers 2
      nas front runs/fashion-mnist --where "flops <= 2e6"
      nas finalize runs/fashion-mnist --epochs 5
      nas export runs/fashion-mnist --best accuracy --where "flops <= 2e6" --to out/
      nas report runs/fashion-mnist
    """


@cli.command()
@click.argument("experiment", type=click.Path(path_type=Path))
@click.option("--workers", type=int, help="Worker processes (default: search.workers).")
@click.option(
    "--trials", type=int, help="Total completed trials to reach (default: search.trials)."
)
@click.option(
    "--sampler",
    type=click.Choice(["auto", "tpe", "nsga2", "nsga3", "random", "gp"]),
    help="Sampler (default: search.sampler).",
)
@click.option("--storage", help="SQLAlchemy URL or journal:PATH (default: RUN_DIR/study.journal).")
@click.option("--backend", type=click.Choice(["local", "ray"]), help="Who runs the trials.")
@click.option("--address", help='Ray cluster ("auto": the running one; default: a local Ray).')
@click.option("--timeout", type=float, help="Stop starting new trials after this many seconds.")
@click.option("--out", type=click.Path(path_type=Path), help="Run folder (default: runs/NAME).")
@click.option(
    "--export/--no-export",
    "do_export",
    default=False,
    help="Export the front when the search ends.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def run(
    experiment: Path,
    workers: int | None,
    trials: int | None,
    sampler: str | None,
    storage: str | None,
    backend: str | None,
    address: str | None,
    timeout: float | None,
    out: Path | None,
    do_export: bool,
    quiet: bool,
) -> None:
    """Run (or resume: re-run the same command) the search of EXPERIMENT (a YAML file)."""
    from nas.runs import run as run_experiment

    r = run_experiment(
        experiment,
        out=out,
        workers=workers,
        trials=trials,
        sampler=sampler,
        storage=storage,
        backend=backend,
        address=address,
        timeout=timeout,
        progress=not quiet,
    )
    rf = r.front()
    click.echo(rf.table())
    click.echo(f"run folder: {r.dir} (front.json, pareto.png); `nas report {r.dir}` for HTML")
    if do_export:
        dirs = rf.export(progress=not quiet)
        click.echo(f"exported {len(dirs)} model(s) to {dirs[0].parent if dirs else '-'}")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--workers", type=int, help="Worker processes here (default: search.workers).")
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    metavar="SECONDS",
    help="Wait this long for `nas run` to create RUN_DIR and its study (0: fail at once).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def worker(run_dir: Path, workers: int | None, wait: float, quiet: bool) -> None:
    """Add this host's workers to RUN_DIR's search (its study in a shared database).

    Start `nas run` first (it creates the run folder and the study), or give it time: `--wait`.
    """
    from nas.runs import join

    r = join(run_dir, workers=workers, progress=not quiet, wait=wait)
    click.echo(f"run folder: {r.dir}: the search has its trials")


_BEST = click.option(
    "--best",
    metavar="METRIC",
    help='Select the best model on METRIC (with --where: under those bounds), e.g. "accuracy".',
)
_KNEE = click.option("--knee", is_flag=True, help="Select the knee of the front.")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--where", help='Filter, e.g. "flops <= 2e6 and accuracy >= 0.9".')
@_BEST
@_KNEE
@click.option("--json", "as_json", is_flag=True, help="Print the front as JSON.")
def front(run_dir: Path, where: str | None, best: str | None, knee: bool, as_json: bool) -> None:
    """Print the Pareto front of RUN_DIR (why each model is on it); write RUN_DIR/pareto.png.

    \b
      nas front runs/fashion-mnist --best accuracy --where "latency_ms <= 1"
    """
    from nas.plots import plot_front
    from nas.runs import Run

    rf = Run.open(run_dir).front(where)
    chosen = rf.select(best=best, knee=knee)
    try:
        png = f"{plot_front(rf.front, run_dir / 'pareto.png')}"
    except OSError as e:  # a run folder on read-only media still shows its front
        png = f"not written ({e.strerror})"
    if as_json:
        out = rf.to_dict()
        if chosen is not None:
            out["selected"] = chosen.number
        click.echo(json.dumps(out, indent=2))
        return
    from nas.report import front_table

    click.echo(
        front_table(rf.front, selected=chosen.number if chosen else None, finals=rf.finals())
    )
    if chosen is not None:
        click.echo("selected: " + rf.describe_selection(chosen, best=best))
    click.echo(f"plot: {png}")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--select", default=None, help="front (default), knee, or trial numbers, e.g. '3 7'.")
@click.option("--where", help='Restrict the front first, e.g. "latency_ms <= 1".')
@_BEST
@_KNEE
@click.option("--to", type=click.Path(path_type=Path), help="Folder (default RUN_DIR/exports).")
@click.option("-q", "--quiet", is_flag=True)
def export(
    run_dir: Path,
    select: str | None,
    where: str | None,
    best: str | None,
    knee: bool,
    to: Path | None,
    quiet: bool,
) -> None:
    """Export selected models of RUN_DIR (ONNX, safetensors, config, metrics), re-verified.

    \b
      nas export runs/fashion-mnist --best accuracy --where "flops <= 1e5" --to out/
    """
    from nas.runs import Run

    rf = Run.open(run_dir).front(where)
    chosen = rf.select(best=best, knee=knee)
    if chosen is not None:
        if select is not None:
            raise NasError("--select and --best/--knee both choose models; pass one of them")
        click.echo("selected: " + rf.describe_selection(chosen, best=best))
        select = str(chosen.number)
    dirs = rf.export(to, select, progress=not quiet)
    click.echo(f"exported {len(dirs)} model(s) to {dirs[0].parent if dirs else '-'}")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--select",
    default="front",
    show_default=True,
    help="front, knee, or trial numbers, e.g. '3 7'.",
)
@click.option("--where", help='Restrict the front first, e.g. "flops <= 1e6".')
@click.option(
    "--epochs",
    type=float,
    help="Training epochs on the full training split (default: the search's train.epochs).",
)
@click.option(
    "--from",
    "start",
    type=click.Choice(["scratch", "search-weights"]),
    default="scratch",
    show_default=True,
    help="Train from random initialisation, or further from the trial's search-time weights.",
)
@click.option("--workers", type=int, help="Models trained at once (default: search.workers).")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def finalize(
    run_dir: Path,
    select: str,
    where: str | None,
    epochs: float | None,
    start: str,
    workers: int | None,
    quiet: bool,
) -> None:
    """Retrain selected models of RUN_DIR at the final budget on the full training split,
    compression applied as searched; re-measure every objective on the test split. Resumable:
    a model finalized with the same budget is kept. `nas export` then exports these weights.

    \b
      nas finalize runs/fashion-mnist --epochs 5
      nas finalize runs/fashion-mnist --select "12 40" --epochs 10 --from search-weights
    """
    from nas.runs import Run

    if workers is not None and workers < 1:
        raise NasError(f"--workers must be >= 1, got {workers}")
    rf = Run.open(run_dir).front(where)
    rf.finalize(select, epochs=epochs, start=start, workers=workers, progress=not quiet)
    click.echo(rf.table())


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--to", type=click.Path(path_type=Path), help="HTML file (default RUN_DIR/report.html)."
)
def report(run_dir: Path, to: Path | None) -> None:
    """Write one self-contained HTML report of RUN_DIR (opens offline): Pareto plots, the front,
    hypervolume over trials, parameter importances, compression statistics."""
    from nas.html_report import write_report
    from nas.runs import Run

    path = write_report(Run.open(run_dir), to)
    click.echo(f"report: {path} ({path.stat().st_size / 1e6:.2f} MB)")


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--to",
    type=click.Path(path_type=Path),
    default=Path("compare.html"),
    show_default=True,
    help="Output: .html (interactive) or .png.",
)
def compare(run_dirs: tuple[Path, ...], to: Path) -> None:
    """Fronts of several runs on one plot; each run's hypervolume under one reference point.

    \b
      nas compare runs/with-compression runs/without --to compare.html
    """
    from nas.html_compare import compare as compare_runs
    from nas.report import table

    path, rows = compare_runs(run_dirs, to)
    click.echo(table(rows, ["run", "models", "feasible", "hypervolume"]))
    click.echo(f"plot: {path}")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--port", type=int, default=0, help="Port on 127.0.0.1 (default: a free one).")
def dashboard(run_dir: Path, port: int) -> None:
    """Serve optuna-dashboard on RUN_DIR's study at http://127.0.0.1:PORT (Ctrl-C stops it)."""
    from nas.dashboard import serve_dashboard
    from nas.runs import Run

    serve_dashboard(Run.open(run_dir), port, announce=click.echo)


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--check", "check_only", is_flag=True, help="Only check; change nothing.")
@click.option("--no-exports", is_flag=True, help="Skip re-verifying the exported models.")
def doctor(run_dir: Path, check_only: bool, no_exports: bool) -> None:
    """Check RUN_DIR (study file, running trials, weights, exports) and repair what can be
    repaired: a torn study file, trials left running by dead processes, temporary files.
    Exits with 1 when a problem is left."""
    from nas.doctor import doctor as check_run

    found = check_run(
        run_dir,
        repair=not check_only,
        verify_exports=not no_exports,
        say=lambda f: click.echo(f"{f.status:8s} {f.text}"),
    )
    if any(f.status == "problem" for f in found):
        raise click.exceptions.Exit(1)


@cli.command()
def spaces() -> None:
    """List the registered search spaces and their arguments (space.args): each default and,
    where a space declares them, the values it takes."""
    from nas.space import SPACES, describe_args, list_spaces

    for name in list_spaces():
        fn = SPACES.get(name)
        doc = (fn.__doc__ or "").strip().splitlines()
        click.echo(f"{name:12s} {doc[0] if doc else ''}")
        for line in describe_args(fn):
            click.echo(f"    {line}")


@cli.command()
def objectives() -> None:
    """List the registered objectives (direction, needs training, unit)."""
    from objectives import OBJECTIVES

    for name in OBJECTIVES:
        o = OBJECTIVES.get(name)
        when = "after training" if o.needs_training else "before training"
        click.echo(f"{name:12s} {o.direction:8s} {when:16s} {o.description}")


@cli.command()
def techniques() -> None:
    """List the compression techniques, their knobs (domain, default range) and exports."""
    from nas.compress import list_techniques

    for t in list_techniques():
        click.echo(f"{t.name:10s} {t.description}")
        for k in t.knobs:
            per = "  (per_layer: true samples it per layer)" if k.name == t.per_layer_knob else ""
            click.echo(
                f"    {k.name:9s} {k.kind:5s} in {k.describe_domain():12s} default "
                f"{list(k.default)}  {k.help}{per}"
            )
        click.echo(f"    exports: {t.exports}")


_FIXES = {
    errno.EACCES: "the path is not writable here; pass another path (--to/--out) or fix its "
    "permissions",
    errno.EPERM: "the path is not writable here; pass another path (--to/--out) or fix its "
    "permissions",
    errno.EROFS: "the file system is read-only; pass a writable path (--to/--out)",
    errno.EEXIST: "a file is in the way; pass a folder path that is free, or remove that file",
    errno.ENOTDIR: "a file is in the way where a folder is needed; pass another path",
    errno.EISDIR: "it is a folder; pass a file path",
    errno.ENOSPC: "the disk is full; free space and re-run the same command (completed trials "
    "are kept)",
    errno.ENOENT: "it does not exist; check the path",
}


def _os_error(e: OSError) -> str:
    what = e.filename if e.filename is not None else "a file"
    fix = _FIXES.get(e.errno or 0, "check the path, its permissions and free space")
    return f"cannot use {what}: {e.strerror or e}; {fix}"


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    if issubclass(category, NasWarning):
        click.echo(f"warning: {message}", err=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler's time limit, ``docker stop``): stopped as Ctrl-C is."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for bad input)."""
    warnings.showwarning = _show_warning
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        code = cli.main(args=argv, prog_name="nas", standalone_mode=False)
        if isinstance(code, int) and code:  # a command's click.exceptions.Exit(code)
            return code
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort as e:  # click's form of KeyboardInterrupt
        if isinstance(e.__cause__ or e.__context__, Terminated):
            click.echo("terminated (SIGTERM); re-run the same command to resume", err=True)
            return 143
        click.echo("interrupted; re-run the same command to resume", err=True)
        return 130
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()} (see `nas --help`)", err=True)
        return 2
    except NasError as e:
        click.echo(f"error: {e}", err=True)
        return 2
    except OSError as e:  # a path the user gave that cannot be read or written
        click.echo(f"error: {_os_error(e)}", err=True)
        return 2
    except KeyboardInterrupt as e:
        why = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        click.echo(f"{why}; completed trials are kept: re-run the same command to resume", err=True)
        return 143 if isinstance(e, Terminated) else 130
    except Exception as e:
        from nas.export import ExportVerificationError

        if isinstance(e, ExportVerificationError):
            click.echo(f"error: {e}", err=True)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
