"""A tabular NAS benchmark: every candidate of a small ``cnn`` sub-space, trained once on mnist1d.

A search benchmark looks a candidate up here instead of training it, so a whole search costs
milliseconds and can be repeated over many seeds. The table holds, per candidate:

    curve    validation accuracy after each epoch 1..E of ONE training run
    test     test accuracy after the last epoch
    macs     multiply-adds of one forward pass at batch 1 (fvcore, BN folded: ``flops`` objective)
    params   number of parameters
    seconds  cumulative training seconds after each epoch (one thread; see ``machine``)

How it was made (``python benchmarks/tabular.py``: 16 min, one process, one torch thread):

* Space: ``search_spaces.cnn.cnn(trial, **SPACE_ARGS)``: 1-3 conv layers of width
  {8, 16, 32, 64} and kernel {3, 5}, BatchNorm, a 2x max pool after each layer (``pool_i`` is a
  single-choice categorical, still recorded), global average pooling and a Linear head. That is
  8 + 64 + 512 = 584 candidates; :func:`enumerate_configs` lists them by walking the
  define-by-run space.
* Data: ``nas.data.load_data(DataConfig(name="mnist1d"))``, the project's loader: mnist1d made
  procedurally (``make_dataset``, default args, nothing downloaded), 4000 train / 1000 test, with
  the fixed stratified val split (10%) carved from train: 3600 train / 400 val / 1000 test.
* Recipe: E = 12 epochs of ``nas.train.train`` called once per epoch (``epochs=1``, constant LR
  inside the call), Adam, batch 128, LR following a cosine over the run, piecewise constant per
  epoch: ``lr_e = 1e-2 * (1 + cos(pi * (e + 0.5) / E)) / 2`` for e = 0..E-1. ``train`` builds
  its optimizer per call, so Adam's moments restart each epoch; measured against one
  uninterrupted cosine run it gives the same final accuracy within seed noise (~1 point). Each
  epoch shuffles with seed ``e`` (the same order for every candidate); weights are initialised
  after ``seed_everything(0)``.

Result: final val accuracy 0.30 / 0.965 / 0.9925 (min / median / max; depth 1 tops out at 0.6),
MACs 1,040 to 627,840; 20 candidates on the (val accuracy, MACs) Pareto front.

Use it::

    from benchmarks import tabular
    table = tabular.load()
    entry = table[params]                 # params dict or tabular.key(params)
    entry.val(), entry.val(epoch=4), entry.macs, entry.test
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    from torch import nn

    from nas.data import Splits

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a path: `python benchmarks/tabular.py`
    sys.path.insert(0, str(ROOT))

DEFAULT_PATH = Path(__file__).resolve().parent / "data" / "cnn_mnist1d.json"
FORMAT = 1

SPACE_NAME = "cnn"
SPACE_ARGS: Mapping[str, Any] = MappingProxyType(
    {
        "input_shape": (1, 40),
        "num_classes": 10,
        "min_depth": 1,
        "max_depth": 3,
        "widths": (8, 16, 32, 64),
        "kernels": (3, 5),
        "batch_norm": True,
        "pools": ("max",),
    }
)
DATA_NAME = "mnist1d"
EPOCHS = 12
LR = 1e-2
BATCH_SIZE = 128
OPTIMIZER = "adam"
INIT_SEED = 0
FLUSH_EVERY = 20


# --- candidates ----------------------------------------------------------------------------------


def key(params: Mapping[str, Any]) -> str:
    """The canonical identity of a candidate: ``json.dumps`` of its sorted params."""
    return json.dumps(sorted(params.items()))


def space(trial: optuna.trial.BaseTrial) -> str:
    """Define-by-run space for a search: suggest a candidate and return its :func:`key`.

    Calls the built-in ``cnn`` space with :data:`SPACE_ARGS`, so the param names, distributions
    and order are exactly those of the table (the small model it builds is discarded).
    """
    from search_spaces.cnn import cnn

    cnn(trial, **SPACE_ARGS)
    return key(trial.params)


class _Unassigned(Exception):
    """Raised by :class:`_Probe` at the first param it has no value for."""

    def __init__(self, name: str, choices: tuple[Any, ...]) -> None:
        super().__init__(name)
        self.name = name
        self.choices = choices


class _Probe:
    """A trial answering from a partial assignment; stops at the first unassigned param."""

    def __init__(self, assigned: Mapping[str, Any]) -> None:
        self._assigned = assigned
        self.params: dict[str, Any] = {}

    def _suggest(self, name: str, choices: Sequence[Any]) -> Any:
        if name not in self._assigned:
            raise _Unassigned(name, tuple(choices))
        self.params[name] = self._assigned[name]
        return self.params[name]

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._suggest(name, choices)

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int:
        if log:
            raise TypeError(f"enumerate_configs: {name} is a log-scale int; enumerate it by hand")
        return self._suggest(name, range(low, high + 1, step))

    def suggest_float(self, name: str, *args: Any, **kwargs: Any) -> float:
        raise TypeError(f"enumerate_configs: {name} is continuous and cannot be enumerated")


def _walk(fn: Callable[[Any], object]) -> list[dict[str, Any]]:
    """Every distinct params dict ``fn(trial)`` can record, in depth-first order of choices."""
    found: dict[str, dict[str, Any]] = {}
    stack: list[dict[str, Any]] = [{}]
    while stack:
        assigned = stack.pop()
        probe = _Probe(assigned)
        try:
            fn(probe)
        except _Unassigned as gap:
            stack.extend({**assigned, gap.name: c} for c in reversed(gap.choices))
            continue
        found.setdefault(key(probe.params), probe.params)  # dedupe on what was recorded
    return list(found.values())


def enumerate_configs() -> list[dict[str, Any]]:
    """Every distinct params dict the sub-space can produce (584 for :data:`SPACE_ARGS`)."""
    import optuna

    from search_spaces.cnn import cnn

    configs = _walk(lambda trial: cnn(trial, **SPACE_ARGS))
    for params in configs:  # the real trial class must record exactly these params
        trial = optuna.trial.FixedTrial(params)
        cnn(trial, **SPACE_ARGS)
        assert trial.params == params, (trial.params, params)
    return configs


# --- the table -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One candidate's results. ``curve[e - 1]`` and ``seconds[e - 1]`` are for epoch ``e``."""

    curve: tuple[float, ...]
    test: float
    macs: int
    params: int
    seconds: tuple[float, ...]

    def val(self, epoch: int | None = None) -> float:
        """Validation accuracy after ``epoch`` (1-based; default: the last)."""
        return self.curve[self._index(epoch)]

    def train_seconds(self, epoch: int | None = None) -> float:
        """Training seconds spent up to and including ``epoch`` (1-based; default: the last)."""
        return self.seconds[self._index(epoch)]

    def _index(self, epoch: int | None) -> int:
        if epoch is None:
            return len(self.curve) - 1
        if not 1 <= epoch <= len(self.curve):
            raise ValueError(
                f"epoch must be in [1, {len(self.curve)}], got epoch={epoch}; the table holds "
                f"{len(self.curve)} epochs"
            )
        return epoch - 1


@dataclass(frozen=True)
class Table:
    """Results by :func:`key`; index with a key or a params dict."""

    epochs: int
    space: str
    space_args: dict[str, Any]
    dataset: dict[str, Any]
    recipe: dict[str, Any]
    machine: dict[str, Any]
    num_configs: int
    entries: dict[str, Entry] = field(repr=False)

    @property
    def complete(self) -> bool:
        return len(self.entries) == self.num_configs

    def __getitem__(self, candidate: str | Mapping[str, Any]) -> Entry:
        k = candidate if isinstance(candidate, str) else key(candidate)
        try:
            return self.entries[k]
        except KeyError:
            hint = (
                "it is not a candidate of this space; sample one with benchmarks.tabular.space"
                if self.complete
                else "finish the build with `python benchmarks/tabular.py`"
            )
            raise KeyError(
                f"candidate {k} is not in the table ({len(self.entries)} of {self.num_configs} "
                f"entries): {hint}"
            ) from None

    def __contains__(self, candidate: object) -> bool:
        if isinstance(candidate, Mapping):
            candidate = key(candidate)
        return candidate in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def configs(self) -> list[dict[str, Any]]:
        """The params dict of every entry."""
        return [dict(json.loads(k)) for k in self.entries]


def _entry(raw: Mapping[str, Any]) -> Entry:
    return Entry(
        curve=tuple(raw["curve"]),
        test=raw["test"],
        macs=raw["macs"],
        params=raw["params"],
        seconds=tuple(raw["seconds"]),
    )


def load(path: str | Path = DEFAULT_PATH) -> Table:
    """Read a table written by :func:`main` (default: the committed ``cnn_mnist1d.json``)."""
    raw = _read(Path(path))
    if raw is None:
        raise FileNotFoundError(
            f"no benchmark table at {path}; build it with `python benchmarks/tabular.py --out "
            f"{path}`"
        )
    return Table(
        epochs=raw["epochs"],
        space=raw["space"],
        space_args=raw["space_args"],
        dataset=raw["dataset"],
        recipe=raw["recipe"],
        machine=raw["machine"],
        num_configs=raw["num_configs"],
        entries={k: _entry(v) for k, v in raw["entries"].items()},
    )


def _read(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    if raw.get("format") != FORMAT:
        raise ValueError(
            f"{path}: table format must be {FORMAT}, got {raw.get('format')!r}; rebuild it"
        )
    return raw


def _write(path: Path, header: Mapping[str, Any], entries: Mapping[str, Any]) -> None:
    """Write atomically: compact JSON, one entry per line (small diffs when rebuilt)."""
    head = json.dumps(dict(header), separators=(",", ":"))
    lines = [
        json.dumps(k) + ":" + json.dumps(entries[k], separators=(",", ":")) for k in sorted(entries)
    ]
    text = head[:-1] + ',"entries":{\n' + ",\n".join(lines) + "\n}}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --- building it ---------------------------------------------------------------------------------


def lr_at(epoch: int, epochs: int, lr: float = LR) -> float:
    """The learning rate of 0-based ``epoch``: a cosine over the run, constant within an epoch."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * (epoch + 0.5) / epochs))


def _build(params: Mapping[str, Any]) -> nn.Module:
    import optuna

    from nas.train import seed_everything
    from search_spaces.cnn import cnn

    seed_everything(INIT_SEED)
    return cnn(optuna.trial.FixedTrial(dict(params)), **SPACE_ARGS)


def evaluate_config(params: Mapping[str, Any], splits: Splits, epochs: int) -> dict[str, Any]:
    """Train one candidate with the table's recipe; return its JSON record."""
    from nas.config import TrainConfig
    from nas.train import evaluate, train
    from objectives import count_flops, count_params

    model = _build(params)
    macs = count_flops(model, splits.input_shape)
    n_params = count_params(model)
    curve: list[float] = []
    seconds: list[float] = []
    spent = 0.0
    for epoch in range(epochs):
        cfg = TrainConfig(
            epochs=1,
            batch_size=BATCH_SIZE,
            optimizer=OPTIMIZER,
            lr=lr_at(epoch, epochs),
            schedule="constant",
        )
        t0 = time.perf_counter()
        train(model, splits.train, cfg, seed=epoch)
        spent += time.perf_counter() - t0
        seconds.append(round(spent, 3))
        curve.append(round(evaluate(model, splits.val), 4))
    return {
        "curve": curve,
        "test": round(evaluate(model, splits.test), 4),
        "macs": macs,
        "params": n_params,
        "seconds": seconds,
    }


def _header(splits: Splits, epochs: int, num_configs: int, val_fraction: float) -> dict[str, Any]:
    import torch

    return {
        "format": FORMAT,
        "space": SPACE_NAME,
        "space_args": json.loads(json.dumps(dict(SPACE_ARGS))),
        "num_configs": num_configs,
        "epochs": epochs,
        "dataset": {
            "name": splits.name,
            "args": {},
            "val_fraction": val_fraction,
            "train": len(splits.train),
            "val": len(splits.val),
            "test": len(splits.test),
            "input_shape": list(splits.input_shape),
            "num_classes": splits.num_classes,
        },
        "recipe": {
            "trainer": "nas.train.train, one call per epoch (epochs=1, schedule=constant)",
            "optimizer": OPTIMIZER,
            "lr": LR,
            "lr_schedule": "per-epoch cosine: lr * (1 + cos(pi * (e + 0.5) / epochs)) / 2",
            "batch_size": BATCH_SIZE,
            "init_seed": INIT_SEED,
            "shuffle_seed": "epoch index",
            "macs": "objectives.count_flops (fvcore, batch 1, BatchNorm not counted)",
        },
        "machine": {
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
        },
    }


def _check_resumable(path: Path, old: Mapping[str, Any], header: Mapping[str, Any]) -> None:
    for field_name in ("space", "space_args", "epochs", "dataset", "recipe"):
        if old.get(field_name) != header[field_name]:
            raise ValueError(
                f"{path} was built with a different {field_name} ({old.get(field_name)!r}, now "
                f"{header[field_name]!r}); pass another --out or delete the file to rebuild"
            )


def main(argv: Sequence[str] | None = None) -> None:
    """Build (or resume) the table; prints a progress line every ``FLUSH_EVERY`` candidates."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_PATH, help="table JSON to write")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="training epochs per config")
    parser.add_argument("--limit", type=int, default=None, help="stop after N new configs")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")

    import torch

    from nas.config import DataConfig
    from nas.data import load_data

    torch.set_num_threads(1)
    configs = enumerate_configs()
    random.Random(0).shuffle(configs)  # mixes cheap and costly configs: an honest ETA and --limit
    data_cfg = DataConfig(name=DATA_NAME)
    splits = load_data(data_cfg)
    header = _header(splits, args.epochs, len(configs), data_cfg.val_fraction)
    old = _read(args.out)
    entries: dict[str, Any] = {}
    if old is not None:
        _check_resumable(args.out, old, header)
        entries = dict(old["entries"])
    todo = [p for p in configs if key(p) not in entries][: args.limit]
    print(f"{len(configs)} configs, {len(entries)} done, {len(todo)} to train -> {args.out}")

    if todo:  # one untimed epoch first: lazy first-call costs stay out of the seconds
        evaluate_config(todo[0], splits, 1)
    t0 = time.perf_counter()
    try:
        for i, params in enumerate(todo, 1):
            entries[key(params)] = evaluate_config(params, splits, args.epochs)
            if i % FLUSH_EVERY == 0 or i == len(todo):
                _write(args.out, header, entries)
                elapsed = time.perf_counter() - t0
                eta = elapsed / i * (len(todo) - i)
                print(
                    f"{i}/{len(todo)} trained ({len(entries)}/{len(configs)} in table), "
                    f"{elapsed / 60:.1f} min, ETA {eta / 60:.1f} min",
                    flush=True,
                )
    finally:
        if entries:
            _write(args.out, header, entries)
    print(f"done in {(time.perf_counter() - t0) / 60:.1f} min: {len(entries)} entries")


if __name__ == "__main__":
    main()
