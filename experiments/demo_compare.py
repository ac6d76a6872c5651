"""The demo's last step: the exported front against hand-designed networks trained the same way.

    python experiments/demo_compare.py runs/fashion-mnist [--seeds 2] [--extra pytorch-mnist]

Reads what ``nas export`` wrote (``RUN/exports/summary.json``: each exported model's test
accuracy, measured on its ONNX file, and its multiply-adds) and the budget ``nas finalize``
trained those models with (``RUN/final/trial-*.json``); trains the reference networks below with
the run's recipe (optimizer, learning rate, schedule, batch size) for the same epochs on the same
training split; measures them the same way (test split; multiply-adds by ``objectives.count_flops``,
fvcore, one multiply-add counted once) and prints the comparison as its last lines. Writes
``RUN/compare.json``. Nothing here is a recorded number: every figure is measured by this run.

References: LeNet-5 as in Caffe's MNIST example (conv 20 -> pool -> conv 50 -> pool -> fc 500 ->
ReLU -> fc 10), and two simpler baselines that need no convolution at all (logistic regression,
an MLP 784-100-10). ``--extra pytorch-mnist`` adds the CNN of PyTorch's MNIST example (conv 32 ->
conv 64 -> pool -> fc 128, dropout; 12 M multiply-adds, about 80 s per epoch and seed on a core).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from torch import nn  # noqa: E402


def lenet5_caffe() -> nn.Module:
    """Caffe's ``examples/mnist/lenet_train_test.prototxt``: no ReLU after the convolutions."""
    return nn.Sequential(
        nn.Conv2d(1, 20, 5),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(800, 500),
        nn.ReLU(),
        nn.Linear(500, 10),
    )


def pytorch_mnist() -> nn.Module:
    """The ``Net`` of PyTorch's ``examples/mnist/main.py``."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Dropout(0.25),
        nn.Flatten(),
        nn.Linear(9216, 128),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(128, 10),
    )


def mlp_100() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10))


def logistic_regression() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))


# name -> (builder, hand-designed CNN: a reference the 10x claim may be made against)
REFERENCES: dict[str, tuple[Callable[[], nn.Module], bool]] = {
    "LeNet-5 (Caffe)": (lenet5_caffe, True),
    "MLP 784-100-10": (mlp_100, False),
    "logistic regression": (logistic_regression, False),
}
EXTRA: dict[str, tuple[Callable[[], nn.Module], bool]] = {
    "PyTorch MNIST CNN": (pytorch_mnist, True),  # --extra pytorch-mnist
}
ALL = {**REFERENCES, **EXTRA}


def exported_models(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The exported models (trial, test accuracy of the ONNX file, multiply-adds) and the budget
    they were trained with: ``{"epochs", "train_examples", "finalized"}``."""
    from nas.run_folder import read_final

    path = run_dir / "exports" / "summary.json"
    if not path.is_file():
        sys.exit(f"error: {path} is missing; run `nas export {run_dir}` first")
    models = json.loads(path.read_text())
    finals = [read_final(run_dir, int(m["trial"])) for m in models]
    budgets = {(f["epochs"], f["train_examples"]) if f else None for f in finals}
    if len(budgets) != 1:
        sys.exit(
            f"error: the exported models of {run_dir} were trained with different budgets "
            f"({sorted(map(str, budgets))}); finalize them all (`nas finalize {run_dir} "
            "--epochs N`) and export again"
        )
    budget = budgets.pop()
    rows = [
        {"trial": int(m["trial"]), "test_accuracy": m["test_accuracy"], "flops": m["flops"]}
        for m in models
    ]
    if budget is None:  # not finalized: the search's own budget, on its training subset
        return rows, {"epochs": None, "train_examples": None, "finalized": False}
    return rows, {"epochs": budget[0], "train_examples": budget[1], "finalized": True}


def train_reference(
    run_dir: str, name: str, epochs: float | None, seed: int, full: bool
) -> dict[str, Any]:
    """Train one reference with the run's recipe on one thread (a worker process); its test
    accuracy and multiply-adds."""
    from nas.data import final_splits, load_data
    from nas.runs import Run
    from nas.search._local import set_threads
    from nas.train import evaluate, seed_everything, train
    from objectives import count_flops

    set_threads(1)
    exp = Run.open(run_dir).exp
    splits = final_splits(exp.data) if full else load_data(exp.data)
    cfg = exp.train.model_copy(update={"epochs": epochs or exp.train.epochs, "steps": None})
    seed_everything(seed)
    model = ALL[name][0]()
    t0 = time.perf_counter()
    train(model, splits.train, cfg, seed=seed)
    return {
        "name": name,
        "seed": seed,
        "test_accuracy": evaluate(model, splits.test),
        "flops": float(count_flops(model, splits.input_shape)),
        "train_examples": len(splits.train),
        "epochs": cfg.epochs,
        "seconds": time.perf_counter() - t0,
    }


def train_references(
    run_dir: Path, names: list[str], budget: dict[str, Any], seeds: int
) -> list[dict[str, Any]]:
    """Every reference for every seed, as many at once as there are cores (one thread each, as
    the search's workers); the mean over seeds and its spread per reference."""
    epochs, full = budget["epochs"], budget["finalized"]
    jobs = [(str(run_dir), n, epochs, s, full) for n in names for s in range(seeds)]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(os.cpu_count() or 1, len(jobs)), mp_context=ctx) as pool:
        runs = list(pool.map(train_reference, *zip(*jobs, strict=True)))
    refs = []
    for name in names:
        mine = [r for r in runs if r["name"] == name]
        accs = [r["test_accuracy"] for r in mine]
        refs.append(
            {
                "name": name,
                "cnn": ALL[name][1],
                "test_accuracy": statistics.fmean(accs),
                "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "seeds": accs,
                "flops": mine[0]["flops"],
                "seconds": sum(r["seconds"] for r in mine),
            }
        )
        print(f"[compare] {name}: {_acc(refs[-1])} test accuracy ({len(accs)} seed(s))")
    return refs


def verdict(ours: list[dict[str, Any]], refs: list[dict[str, Any]]) -> dict[str, Any]:
    """The claims, checked: the best exported model's accuracy; for the cheapest exported model,
    the hand-designed CNN with the most multiply-adds whose accuracy is at most its own; and for
    each reference, the cheapest exported model at least as accurate."""
    best = max(ours, key=lambda m: m["test_accuracy"])
    cheapest = min(ours, key=lambda m: m["flops"])
    beaten = [r for r in refs if r["cnn"] and r["test_accuracy"] <= cheapest["test_accuracy"]]
    versus = max(beaten, key=lambda r: r["flops"], default=None)
    answers = []
    for r in refs:
        match = [m for m in ours if m["test_accuracy"] >= r["test_accuracy"]]
        m = min(match, key=lambda m: m["flops"], default=None)
        answers.append(
            {
                "reference": r["name"],
                "as_accurate": m is not None,
                # else the most accurate exported model, and whether it is within the
                # reference's seed range (the lowest seed's accuracy or above)
                "trial": (m or best)["trial"],
                "within_seed_range": m is None and best["test_accuracy"] >= min(r["seeds"]),
                "flops_ratio": r["flops"] / (m or best)["flops"],
                "gap_points": 100 * ((m or best)["test_accuracy"] - r["test_accuracy"]),
            }
        )
    return {
        "best": best,
        "cheapest": cheapest,
        "cheapest_versus": versus and versus["name"],
        "cheapest_flops_ratio": versus and versus["flops"] / cheapest["flops"],
        "answers": answers,
    }


def _acc(r: dict[str, Any]) -> str:
    s = f"{100 * r['test_accuracy']:.2f} %"
    return s + (f" ±{100 * r['std']:.2f}" if r.get("std") else "")


def report(ours: list[dict[str, Any]], refs: list[dict[str, Any]], v: dict[str, Any]) -> str:
    """The table and the verdict: the demo's last lines."""
    rows = [
        (f"ours, best (trial {v['best']['trial']})", v["best"]),
        (f"ours, cheapest (trial {v['cheapest']['trial']})", v["cheapest"]),
        *((r["name"], r) for r in refs),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'model':<{width}}  {'test accuracy':>15}  {'multiply-adds':>13}"]
    lines += [f"{name:<{width}}  {_acc(r):>15}  {r['flops']:>13,.0f}" for name, r in rows]
    b, c = v["best"], v["cheapest"]
    lines.append(
        f"best exported model: {_acc(b)} test accuracy at {b['flops']:,.0f} multiply-adds "
        f"({len(ours)} exported)"
    )
    if v["cheapest_versus"]:
        ref = next(r for r in refs if r["name"] == v["cheapest_versus"])
        lines.append(
            f"cheapest exported model: {_acc(c)} at {c['flops']:,.0f} multiply-adds, "
            f"{v['cheapest_flops_ratio']:.1f}x fewer than {ref['name']} at {_acc(ref)} "
            f"({100 * (c['test_accuracy'] - ref['test_accuracy']):+.2f} points)"
        )
    else:
        lines.append(
            f"cheapest exported model: {_acc(c)} at {c['flops']:,.0f} multiply-adds, less "
            "accurate than every hand-designed CNN here"
        )
    for a in v["answers"]:
        ref = next(r for r in refs if r["name"] == a["reference"])
        ratio = (
            f"{a['flops_ratio']:.1f}x fewer multiply-adds"
            if a["flops_ratio"] >= 1
            else f"{1 / a['flops_ratio']:.1f}x more multiply-adds"
        )
        if a["as_accurate"]:
            lines.append(
                f"vs {ref['name']}: the cheapest exported model as accurate is trial "
                f"{a['trial']} ({a['gap_points']:+.2f} points), {ratio}"
            )
        else:
            seeds = ", ".join(f"{100 * x:.2f}" for x in sorted(ref["seeds"]))
            lines.append(
                f"vs {ref['name']}: no exported model is as accurate as its mean; the best, "
                f"trial {a['trial']} ({a['gap_points']:+.2f} points, {ratio}), is "
                + ("within" if a["within_seed_range"] else "below")
                + f" its seed range ({seeds} %)"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--seeds", type=int, default=2, help="seeds per reference (mean reported)")
    ap.add_argument("--extra", action="append", default=[], choices=["pytorch-mnist"])
    args = ap.parse_args()
    ours, budget = exported_models(args.run_dir)
    names = [*REFERENCES, *(["PyTorch MNIST CNN"] if args.extra else [])]
    refs = train_references(args.run_dir, names, budget, args.seeds)
    v = verdict(ours, refs)
    how = (
        f"{budget['epochs']:g} epochs on the full {budget['train_examples']:,}-image training "
        "split (`nas finalize`)"
        if budget["finalized"]
        else "the search's own budget and training subset (not finalized)"
    )
    lines = [
        f"Fashion-MNIST test split; every model trained with the run's recipe for {how}; "
        f"references: mean of {args.seeds} seed(s) ± std:",
        *report(ours, refs, v).splitlines(),
    ]
    out = {"budget": budget, "seeds": args.seeds, "exported": ours, "references": refs}
    out |= {"verdict": v, "last_lines": lines}
    (args.run_dir / "compare.json").write_text(json.dumps(out, indent=2))
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
