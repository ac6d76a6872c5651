"""The ``nas`` command: run | worker | front | export | spaces | objectives | techniques.

Bad input prints one line (``error: <what is wrong>; <the fix>``) to stderr and exits with 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from nas.errors import NasError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nas")
def cli() -> None:
    """Search for efficient neural networks: architecture + compression, Pareto front, export.

    \b
      nas run experiments/fashion_mnist.yaml --workers 2
      nas front runs/fashion-mnist --where "flops <= 2e6"
      nas export runs/fashion-mnist --select knee --to out/
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
    click.echo(f"run folder: {r.dir} (front.json, pareto.png)")
    if do_export:
        dirs = rf.export(progress=not quiet)
        click.echo(f"exported {len(dirs)} model(s) to {dirs[0].parent if dirs else '-'}")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--workers", type=int, help="Worker processes here (default: search.workers).")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def worker(run_dir: Path, workers: int | None, quiet: bool) -> None:
    """Add this host's workers to RUN_DIR's search (its study in a shared database)."""
    from nas.runs import join

    r = join(run_dir, workers=workers, progress=not quiet)
    click.echo(f"run folder: {r.dir}: the search has its trials")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--where", help='Filter, e.g. "flops <= 2e6 and accuracy >= 0.9".')
@click.option("--json", "as_json", is_flag=True, help="Print the front as JSON.")
def front(run_dir: Path, where: str | None, as_json: bool) -> None:
    """Print the Pareto front of RUN_DIR and write RUN_DIR/pareto.png."""
    from nas.runs import Run

    rf = Run.open(run_dir).front(where)
    png = rf.front.plot(run_dir / "pareto.png")
    if as_json:
        click.echo(json.dumps(rf.front.to_dict(), indent=2))
    else:
        click.echo(rf.table())
        click.echo(f"plot: {png}")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--select", default=None, help="front (default), knee, or trial numbers, e.g. '3 7'.")
@click.option("--where", help='Restrict the front first, e.g. "latency_ms <= 1".')
@click.option("--to", type=click.Path(path_type=Path), help="Folder (default RUN_DIR/exports).")
@click.option("-q", "--quiet", is_flag=True)
def export(
    run_dir: Path, select: str | None, where: str | None, to: Path | None, quiet: bool
) -> None:
    """Export selected models of RUN_DIR (ONNX, safetensors, config, metrics), re-verified."""
    from nas.runs import Run

    dirs = Run.open(run_dir).front(where).export(to, select, progress=not quiet)
    click.echo(f"exported {len(dirs)} model(s) to {dirs[0].parent if dirs else '-'}")


@cli.command()
def spaces() -> None:
    """List the registered search spaces."""
    from nas.space import SPACES, list_spaces

    for name in list_spaces():
        doc = (SPACES.get(name).__doc__ or "").strip().splitlines()
        click.echo(f"{name:12s} {doc[0] if doc else ''}")


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


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for bad input)."""
    try:
        cli.main(args=argv, prog_name="nas", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("interrupted; re-run the same command to resume", err=True)
        return 130
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()} (see `nas --help`)", err=True)
        return 2
    except NasError as e:
        click.echo(f"error: {e}", err=True)
        return 2
    except KeyboardInterrupt:
        click.echo(
            "interrupted; completed trials are kept: re-run the same command to resume", err=True
        )
        return 130
    except Exception as e:
        from nas.export import ExportVerificationError

        if isinstance(e, ExportVerificationError):
            click.echo(f"error: {e}", err=True)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
