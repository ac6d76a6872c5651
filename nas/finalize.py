"""``nas finalize``: retrain selected models of a run at the final budget, re-measure them.

A search ranks candidates at low fidelity (a training subset, few epochs). Finalizing a model
retrains it on the whole training split (the search's train and val parts) for ``epochs`` epochs
with the run's recipe, compression applied as searched (slimming's sparsity training, channel
removal and fine-tune; QAT at the searched bits; ...), and measures every objective again on the
test split. Two starting points:

- ``scratch`` (default): the architecture rebuilt from the trial's params, trained from random
  initialisation (what NAS papers do with their selected architectures);
- ``search-weights``: the trial's saved, already compressed model trained further for ``epochs``
  at the fine-tune learning rate (pruned weights stay zero). Not for weight sharing, Deep
  Compression or binarization: training moves weights off their codebook / binary values.

Everything lands in ``RUN_DIR/final/``: ``trial-NNNNN.json`` (final and search-time metrics, the
budget) and ``weights/`` (what ``nas export`` then exports instead of the search-time weights).
A model whose record exists with the same budget is not trained again (resumable per model).
Models train in parallel, one per worker process (``search.workers`` by default).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import torch

from nas.errors import NasError
from nas.run_folder import LATENCY_BATCHES, LATENCY_KEY, final_root, read_finals, record_file

if TYPE_CHECKING:
    from nas.run_folder import RunFolder as Run
    from nas.search._problem import Point

STARTS = ("scratch", "search-weights")
# compression whose exact values a further fine-tune would break: finalize these from scratch
_KEEP_EXACT = ("weight_sharing", "deep_compression", "binarize")


class Replay(optuna.trial.FixedTrial):
    """Replays a trial's params into the space; a value the current space code no longer offers,
    or a param it now asks for and the trial never had, is a NasError naming it."""

    def __init__(self, params: dict[str, Any], number: int, space: str) -> None:
        super().__init__(params, number)
        self._space = space

    def _suggest(self, name: str, distribution: optuna.distributions.BaseDistribution) -> Any:
        if name not in self._params:
            raise NasError(
                f"trial {self.number}: space {self._space!r} now asks for param {name!r}, which "
                f"the trial never sampled; restore the space code the search ran with, or run a "
                f"new search"
            )
        value = self._params[name]
        try:
            ok = distribution._contains(distribution.to_internal_repr(value))
        except (ValueError, TypeError):
            ok = False
        if not ok:
            raise NasError(
                f"trial {self.number}: param {name}={value!r} is outside what space "
                f"{self._space!r} now offers ({_domain(distribution)}); restore the space code "
                f"or args the search ran with, or finalize other trials"
            )
        return super()._suggest(name, distribution)


def _domain(d: optuna.distributions.BaseDistribution) -> str:
    if isinstance(d, optuna.distributions.CategoricalDistribution):
        return f"one of {list(d.choices)}"
    low, high = getattr(d, "low", "?"), getattr(d, "high", "?")
    return f"{low}..{high}"


@dataclass(frozen=True)
class Job:
    """One model to finalize (what a worker process receives)."""

    run_dir: str
    number: int
    params: dict[str, Any]
    search_metrics: dict[str, float]
    epochs: float
    start: str
    threads: int
    seed: int = 0  # added to the search's seed (``seed + trial number`` seeds the training)
    root: str | None = None  # where weights and record go (default ``RUN_DIR/final``)


def check(run: Run, points: Sequence[Point], epochs: float, start: str) -> None:
    """Bad input, before anything is trained: the epochs, the start, and each model (its params
    must build with the current space code; ``search-weights`` needs stored weights)."""
    from nas.pipeline import ExperimentProblem
    from nas.search._problem import Rejected
    from nas.weights import load_trial, weights_path

    if not (isinstance(epochs, int | float) and math.isfinite(epochs) and epochs > 0):
        raise NasError(f"--epochs must be > 0, got {epochs}; pass e.g. --epochs 5")
    if start not in STARTS:
        raise NasError(f"--from {start!r}: use one of {', '.join(STARTS)}")
    problem = ExperimentProblem(run.exp, run.dir, run.splits)
    for p in points:
        try:
            problem.sample(Replay(p.params, p.number, run.exp.space.name))
        except NasError as err:
            if str(err).startswith(f"trial {p.number}:"):
                raise
            raise NasError(
                f"trial {p.number} no longer builds: {err}; fix the space code, or finalize "
                f"other trials"
            ) from None
        except Rejected as err:
            raise NasError(
                f"trial {p.number} no longer builds: {err}; finalize other trials"
            ) from None
        except Exception as err:  # the user's space code raised
            raise NasError(
                f"trial {p.number}: space {run.exp.space.name!r} raised "
                f"{type(err).__name__}: {err}; fix the space code, or finalize other trials"
            ) from None
        if start != "search-weights":
            continue
        stored = weights_path(run.dir, p.number)
        if not stored.is_file():
            raise NasError(
                f"trial {p.number} has no stored weights ({stored}); "
                f"finalize it --from scratch, or re-run the search"
            )
        model = load_trial(run.dir, p.number, run.exp.space.name)
        exact = [t for t in _KEEP_EXACT if t in getattr(model, "nas_compression", {})]
        if exact:
            raise NasError(
                f"trial {p.number} uses {exact[0]}: further training moves its weights off their "
                f"exact values; finalize it --from scratch"
            )


def finalize(
    run: Run,
    points: Sequence[Point],
    *,
    epochs: float,
    start: str = "scratch",
    workers: int | None = None,
    progress: bool = True,
) -> dict[int, dict[str, Any]]:
    """Finalize ``points`` of ``run`` (see the module doc); return trial number -> record.

    Models already finalized with this budget are read back, not trained again.
    """
    check(run, points, epochs, start)
    done = read_finals(run.dir)
    todo = [
        p
        for p in points
        if not (
            p.number in done
            and done[p.number]["epochs"] == epochs
            and done[p.number]["from"] == start
        )
    ]
    out = {p.number: done[p.number] for p in points if p not in todo}
    say: Callable[[str], None] = _say if progress else (lambda m: None)
    if out:
        say(f"{len(out)} of {len(points)} model(s) already finalized with this budget: kept")
    if todo:
        _train_all(run, todo, out, epochs, start, workers, say, progress)
    # timed here, one model at a time, once no worker trains: latency needs a quiet machine
    # (also a model whose timing an interrupted finalize did not reach)
    untimed = [p for p in points if LATENCY_KEY not in out[p.number]["metrics"]]
    for p in untimed:
        out[p.number] = _time_final(run, p, out[p.number])
    if untimed:
        say(
            f"latency of {len(untimed)} model(s) measured (onnxruntime, 1 thread, batch "
            f"{' and '.join(map(str, LATENCY_BATCHES))}); `nas front {run.dir}` shows the "
            f"final metrics, `nas export` exports these models"
        )
    return out


def _train_all(
    run: Run,
    todo: Sequence[Point],
    out: dict[int, dict[str, Any]],
    epochs: float,
    start: str,
    workers: int | None,
    say: Callable[[str], None],
    progress: bool,
) -> None:
    """Train ``todo`` in worker processes; put each record in ``out`` as it finishes."""
    n_workers = max(1, min(workers or run.exp.search.workers, len(todo)))
    threads = max(1, (os.cpu_count() or 1) // n_workers)
    jobs = [
        Job(str(run.dir), p.number, p.params, p.metrics, float(epochs), start, threads)
        for p in todo
    ]
    say(
        f"{len(jobs)} model(s), {epochs:g} epochs from {start} on the full training split, "
        f"{n_workers} worker(s) x {threads} thread(s)"
    )
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(n_workers, mp_context=ctx) as pool:
        pending = {pool.submit(finalize_one, job, progress): job for job in jobs}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                job = pending.pop(fut)
                try:
                    rec = fut.result()
                except BrokenProcessPool:
                    raise NasError(
                        f"a finalize worker died while training trial {job.number} (killed, or "
                        f"out of memory?); re-run the same command: finalized models are kept"
                    ) from None
                out[job.number] = rec
                n = len(jobs) - len(pending)
                eta = (time.perf_counter() - t0) / n * len(pending)
                acc = rec["metrics"].get("test_accuracy", math.nan)
                was = rec["search_metrics"].get("test_accuracy", math.nan)
                say(
                    f"{n}/{len(jobs)} trial {job.number}: test accuracy {acc:.4f} (search "
                    f"{was:.4f}) in {rec['seconds']:.0f} s | eta {eta:.0f} s"
                )


def _time_final(run: Run, p: Point, rec: dict[str, Any]) -> dict[str, Any]:
    """Add the deployed model's onnxruntime latencies to a finalized model's record."""
    import tempfile

    from nas.export import deployed_onnx, latencies
    from nas.run_folder import trial_model

    model = trial_model(run, p, final_root(run.dir))
    with tempfile.TemporaryDirectory() as tmp:
        path, _ = deployed_onnx(model, run.splits, Path(tmp))
        rec["metrics"].update(latencies(path, run.splits.input_shape, LATENCY_BATCHES))
    _write_record(final_root(run.dir), rec)
    return rec


def _say(message: str) -> None:
    print(f"[finalize] {message}", flush=True)


def _write_record(root: Path, rec: dict[str, Any]) -> None:
    path = record_file(root, int(rec["trial"]))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(rec, indent=2))
    os.replace(tmp, path)


def finalize_one(job: Job, progress: bool = True) -> dict[str, Any]:
    """Train, compress, measure and save one model (runs in a worker process)."""
    from nas.data import final_splits
    from nas.pipeline import ExperimentProblem
    from nas.run_folder import RunFolder
    from nas.search._local import set_threads

    set_threads(job.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run = RunFolder.open(job.run_dir)
    exp = run.exp.model_copy(
        update={
            "train": run.exp.train.model_copy(update={"epochs": job.epochs, "steps": None}),
            "search": run.exp.search.model_copy(update={"seed": run.exp.search.seed + job.seed}),
        }
    )
    splits = final_splits(exp.data)
    announce = _say if progress else None
    root = Path(job.root) if job.root else final_root(run.dir)
    problem = ExperimentProblem(exp, root, splits, announce=announce)
    t0 = time.perf_counter()
    trial = Replay(job.params, job.number, exp.space.name)
    if job.start == "scratch":
        metrics = problem.evaluate(problem.sample(trial), trial)
    else:
        model, compression = _continue_training(run, problem, job)
        metrics = problem.finish(model, compression, problem.context(), job.number)
    rec = {
        "trial": job.number,
        "epochs": job.epochs,
        "from": job.start,
        "train_examples": len(splits.train),
        "seed": exp.search.seed + job.number,
        "measured_on": "test split",
        "seconds": time.perf_counter() - t0,
        "metrics": metrics,
        "search_metrics": job.search_metrics,
    }
    _write_record(root, rec)  # the record last: it marks the model as finalized
    return rec


def _continue_training(run: Run, problem: Any, job: Job) -> tuple[torch.nn.Module, dict]:
    """``search-weights``: the trial's saved model trained further; zeros stay zero."""
    from nas.pipeline import finetune_config
    from nas.run_folder import trial_model
    from nas.search._problem import Point
    from nas.train import train

    model = trial_model(run, Point(job.number, job.params, job.search_metrics))
    compression = dict(getattr(model, "nas_compression", {}))
    masks = [
        (m.weight, m.weight.detach() != 0)
        for m in model.modules()
        if getattr(m, "sparse_weight", False) and isinstance(m.weight, torch.Tensor)
    ]

    def keep_zeros(step: int, steps: int) -> None:
        with torch.no_grad():
            for w, mask in masks:
                w.mul_(mask)

    hooks = [keep_zeros] if masks else []
    if problem.announce is not None:
        hooks.append(problem.epoch_progress(job.number))

    def on_step(step: int, steps: int) -> None:
        for h in hooks:
            h(step, steps)

    cfg = finetune_config(problem.exp.train, job.epochs)
    seed = problem.exp.search.seed + job.number
    train(model, problem.data.train, cfg, seed=seed, on_step=on_step if hooks else None)
    return model, compression
