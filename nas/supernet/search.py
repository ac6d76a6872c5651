"""``search: {mode: supernet}``: train one supernet, then score thousands of sub-networks.

The stages of a supernet run, each resumable, all in the run folder:

1. **train** the space's elastic supernet for ``search.supernet.epochs`` (sandwich rule with
   in-place distillation, :mod:`nas.supernet.train`) -> ``supernet/supernet.pt``;
2. **latency table**: when ``latency_ms`` is measured, every distinct piece of a sub-network is
   timed once per machine -> ``supernet/latency_table.json``; a candidate's ``latency_ms`` is
   then the table's prediction (:mod:`nas.supernet.latency`), for the sub-network before
   compression;
3. **search**: the usual study (workers, sampler, resume); each trial samples a sub-network and
   compression knobs, cuts the sub-network from the trained weights, re-estimates its BatchNorm
   statistics on ``search.supernet.calibration`` training images, applies the compression
   without training (slimming removes the trailing channels, the supernet's importance order;
   quantization rounds the weights at the searched bits: post-training), re-estimates the
   BatchNorm statistics of the compressed model and measures every objective. No training;
4. **front**: each front model is cut again and saved as the trial's weights, so ``nas export``
   and ``nas finalize`` work as for any run; with ``search.supernet.finetune`` > 0 the front is
   then fine-tuned for that many epochs (``nas finalize --from search-weights``);
5. **predictors**: an accuracy predictor (gradient-boosted trees on the trial params, fitted on
   80% of the scored candidates) and the latency table are checked against measured values
   (Kendall tau on the held-out 20% / on 30 scored sub-networks timed whole) ->
   ``supernet/predictors.json``.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import torch
from torch import nn

from nas.compress._base import Context
from nas.errors import NasError
from nas.front import NOT_APPLIED
from nas.pipeline import (
    Candidate,
    ExperimentProblem,
    as_deployed,
    compress,
    finish_sparse,
    int8_onnx,
)
from nas.supernet.elastic import ElasticMobileNet
from nas.supernet.latency import LatencyTable
from nas.supernet.train import CHECKPOINT, recalibrate_bn, train_supernet

if TYPE_CHECKING:
    from nas.config import Experiment
    from nas.data import Splits
    from nas.run_folder import RunFolder as Run

SUPERNET_DIR = "supernet"
LATENCY_TABLE = "latency_table.json"
PREDICTORS = "predictors.json"
TRAINING = "training.json"
LATENCY = "latency_ms"


def supernet_dir(run_dir: Path) -> Path:
    return Path(run_dir) / SUPERNET_DIR


def build_supernet(exp: Experiment, splits: Splits) -> ElasticMobileNet:
    """The (untrained) supernet of the experiment's space; bad input is one NasError line."""
    from nas.space import resolve_space
    from search_spaces.elastic import elastic_dimensions

    space = resolve_space(exp.space.name)
    make = getattr(space, "supernet", None)
    if make is None:
        raise NasError(
            f"space {exp.space.name!r} has no elastic dimensions, so search.mode supernet cannot "
            f"use it; use space elastic_mobilenet or elastic_cnn, or search.mode train"
        )
    try:
        net = make(input_shape=splits.input_shape, num_classes=splits.num_classes, **exp.space.args)
    except (ValueError, TypeError) as err:
        raise NasError(f"space: {err}") from None
    if not elastic_dimensions(net):
        raise NasError(
            f"space {exp.space.name!r} with these args has no elastic dimension (depths, "
            f"expansions, kernels and width_mults each offer one value): there is no "
            f"sub-network to search; give one of them several values"
        )
    return net


def check_experiment(exp: Experiment, splits: Splits) -> None:
    """What supernet mode cannot do, refused before the run folder is touched."""
    from nas.compress import parse_compression

    build_supernet(exp, splits)
    if splits.streamed:
        raise NasError(
            f"search.mode supernet trains on in-memory data; data {exp.data.name!r} is streamed "
            f"from disk: use search.mode train, or a built-in in-memory dataset"
        )
    if exp.search.fidelity is not None:
        raise NasError(
            "search.fidelity stops training early, but in search.mode supernet no candidate is "
            "trained; remove search.fidelity"
        )
    if exp.search.backend != "local":
        raise NasError(
            "search.mode supernet runs on the local backend (workers on this machine); remove "
            "search.backend: ray or use search.mode train"
        )
    for tech, _ in parse_compression(exp.compression):
        if tech.training_only:
            raise NasError(
                f"compression.{tech.name} is a training option, and supernet mode scores "
                f"sub-networks without training; remove it (the front can be finalized with it "
                f"from scratch: `nas finalize`)"
            )


def dataset_key(exp: Experiment) -> str:
    return json.dumps(exp.data.model_dump(mode="json"), sort_keys=True)


def train_stage(run: Run, progress: bool = True) -> ElasticMobileNet:
    """Train (or resume, or load) the run's supernet; record how in ``supernet/training.json``."""
    exp, say = run.exp, _sayer(progress)
    torch.manual_seed(exp.search.seed)  # the supernet's initial weights
    net = build_supernet(exp, run.splits)
    cfg = exp.train.model_copy(update={"epochs": exp.search.supernet.epochs, "steps": None})
    path = supernet_dir(run.dir) / CHECKPOINT
    record = supernet_dir(run.dir) / TRAINING
    say(
        f"training the supernet: {cfg.epochs:g} epochs on {len(run.splits.train)} examples, "
        f"sandwich rule (largest, smallest, {exp.search.supernet.random_subnets} random "
        f"sub-networks per step, in-place distillation)"
    )
    stats = train_supernet(
        net,
        run.splits.train,
        cfg,
        dataset=dataset_key(exp),
        checkpoint=path,
        n_random=exp.search.supernet.random_subnets,
        seed=exp.search.seed,
        announce=say,
    )
    if stats["resumed_from"] < stats["epochs"] or not record.is_file():
        old = json.loads(record.read_text()) if record.is_file() else {}
        stats["seconds"] += old.get("seconds", 0.0) if stats["resumed_from"] else 0.0
        _write_json(record, stats)
    return net


@dataclass
class SupernetProblem(ExperimentProblem):
    """An experiment whose candidates are scored with inherited weights (see the module doc)."""

    net: ElasticMobileNet = field(init=False)
    lut: LatencyTable | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.net = build_supernet(self.exp, self.data)
        path = supernet_dir(self.run_dir) / CHECKPOINT
        if not path.is_file():
            raise NasError(
                f"{path} is missing: the supernet is trained before the search; re-run "
                f"`nas run` on this experiment to train it"
            )
        state = torch.load(path, weights_only=False)  # our own run folder's file
        self.net.load_state_dict(state["model"])
        self.net.eval()
        self.calib_x = self.data.train.head(self.exp.search.supernet.calibration).x
        if LATENCY in self.metrics:
            spec = self.exp.objectives.get(LATENCY)
            batch = int((spec.args if spec else {}).get("batch_size", 1))
            self.lut = LatencyTable(supernet_dir(self.run_dir) / LATENCY_TABLE, batch_size=batch)
            self.metrics = {k: v for k, v in self.metrics.items() if k != LATENCY}

    def subnet(self, config: Mapping[str, Any]) -> nn.Module:
        """Sub-network ``config`` with inherited weights and recalibrated BN, standalone."""
        self.net.set_active(config)
        recalibrate_bn(self.net, self.calib_x)
        return self.net.extract().eval()

    def _with_latency(self, metrics: dict[str, float], config: Mapping[str, Any]) -> dict:
        if self.lut is not None:
            metrics[LATENCY] = self.lut.predict(self.net, config)
        return metrics

    def static(self, candidate: Candidate) -> dict[str, float]:
        return self._with_latency(super().static(candidate), candidate.model.nas_subnet)

    def context(self) -> Context:
        """Compression's data: the calibration images (BN and int8 ranges alike); slimming
        removes the supernet's trailing channels."""
        ctx = super().context()
        ctx.calib_x, ctx.calib_y = self.calib_x, self.data.train.y[: len(self.calib_x)]
        ctx.leading_channels = True
        return ctx

    def build(self, candidate: Candidate) -> tuple[nn.Module, dict[str, Any]]:
        """The candidate cut from the supernet and compressed (no training): the model as it is
        deployed, before :func:`finish_sparse`, and what compressed it. Compression that changes
        what the layers see (fewer channels, rounded or factorized weights) is followed by a
        re-estimation of the BatchNorm statistics, on the same calibration images."""
        model = self.subnet(candidate.model.nas_subnet)
        plan = [s for s in candidate.plan if not s.technique.training_only]
        if plan:
            # cloned: a technique may change the weights in place
            before = {k: v.clone() for k, v in model.state_dict().items()}
            model = compress(model, plan, self.context())
            after = model.state_dict()
            if before.keys() != after.keys() or any(
                not torch.equal(v, after[k]) for k, v in before.items()
            ):
                recalibrate_bn(model, self.calib_x)
            return model, model.nas_compression  # the techniques that changed something
        return model, candidate.describe()

    def evaluate(
        self,
        candidate: Candidate,
        trial: optuna.trial.BaseTrial,
        report: Callable[[float, Mapping[str, float]], None] | None = None,
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        torch.manual_seed(self.exp.search.seed + trial.number)
        model, compression = self.build(candidate)
        if compression:
            trial.set_user_attr("compression", compression)
        if getattr(model, "nas_not_applied", None):
            trial.set_user_attr(NOT_APPLIED, model.nas_not_applied)
        model = finish_sparse(model, compression)
        plain = as_deployed(model, compression)
        onnx = int8_onnx(plain, compression, self.context())
        metrics = self.measure(plain, trained=None, split=self.data.val, onnx=onnx)
        trial.set_user_attr("score_seconds", time.perf_counter() - t0)
        return self._with_latency(metrics, candidate.model.nas_subnet)


def problem(exp: Experiment, run_dir: Path, splits: Splits | None = None) -> ExperimentProblem:
    """The problem of a run folder's experiment: supernet scoring or training per trial."""
    if exp.search.mode == "supernet":
        return SupernetProblem(exp, run_dir, splits)
    return ExperimentProblem(exp, run_dir, splits)


def save_front(run: Run, progress: bool = True) -> list[int]:
    """Cut each front model from the supernet and save it as its trial's weights (the trial's
    search metrics describe exactly these weights); return the trial numbers saved now."""
    from nas.finalize import Replay
    from nas.run_folder import select_points
    from nas.weights import weights_path

    say = _sayer(progress)
    points = select_points(run, run.feasible_front(), "front")
    todo = [p for p in points if not weights_path(run.dir, p.number).is_file()]
    if not todo:
        return []
    prob = SupernetProblem(run.exp, run.dir, run.splits)
    for p in todo:
        candidate = prob.sample(Replay(p.params, p.number, run.exp.space.name))
        model, compression = prob.build(candidate)
        prob.finish(model, compression, prob.context(), p.number)
    say(f"{len(todo)} front model(s) cut from the supernet and saved")
    return [p.number for p in todo]


def _features(params: list[dict[str, Any]]) -> tuple[Any, list[str]]:
    """Trial params as numbers: numeric params as they are (0 when absent), categorical ones
    one-hot."""
    import numpy as np

    cols: list[str] = sorted(
        {f"{k}={v}" if isinstance(v, str) else k for p in params for k, v in p.items()}
    )
    index = {c: i for i, c in enumerate(cols)}
    x = np.zeros((len(params), len(cols)))
    for r, p in enumerate(params):
        for k, v in p.items():
            if isinstance(v, str):
                x[r, index[f"{k}={v}"]] = 1.0
            else:
                x[r, index[k]] = float(v)
    return x, cols


def predictors(run: Run, progress: bool = True, timed: int = 30) -> dict[str, Any]:
    """Fit the accuracy predictor, check both predictors (Kendall tau), cache them."""
    import numpy as np
    from scipy.stats import kendalltau
    from sklearn.ensemble import GradientBoostingRegressor

    from nas.front import completed_points
    from nas.supernet.latency import measure

    say, out = _sayer(progress), {}
    feasible, infeasible = completed_points(run.study())
    points = [p for p in feasible + infeasible if "accuracy" in p.metrics]
    points.sort(key=lambda p: p.number)
    if len(points) >= 20:
        x, cols = _features([p.params for p in points])
        y = np.array([p.metrics["accuracy"] for p in points])
        order = np.random.default_rng(0).permutation(len(points))
        cut = int(0.8 * len(points))
        fit, held = order[:cut], order[cut:]
        model = GradientBoostingRegressor(random_state=0)  # 100 trees of depth 3
        model.fit(x[fit], y[fit])
        tau = float(kendalltau(model.predict(x[held]), y[held]).statistic)
        model.fit(x, y)  # the cached predictor uses every candidate
        path = supernet_dir(run.dir) / "accuracy_predictor.pkl"
        path.write_bytes(pickle.dumps({"features": cols, "model": model}))
        out["accuracy"] = {
            "model": "gradient-boosted trees (100, depth 3) on the trial params",
            "fitted_on": len(fit),
            "held_out": len(held),
            "kendall_tau": tau,
        }
        say(f"accuracy predictor: Kendall tau {tau:.3f} on {len(held)} held-out candidates")
    prob = SupernetProblem(run.exp, run.dir, run.splits)
    if prob.lut is not None:
        from nas.finalize import Replay
        from search_spaces.elastic import sample_config

        gen = torch.Generator().manual_seed(run.exp.search.seed)
        configs = [
            sample_config(Replay(p.params, p.number, run.exp.space.name), prob.net)
            for p in points[:timed]
        ] or [prob.net.sample(gen) for _ in range(timed)]
        pred = [prob.lut.predict(prob.net, c) for c in configs]
        shape = tuple(run.splits.input_shape)
        real = [measure(prob.net.extract(c).eval(), shape, prob.lut.batch_size) for c in configs]
        tau = float(kendalltau(pred, real).statistic)
        out["latency"] = {
            "model": "per-piece onnxruntime lookup table",
            "pieces": len(prob.lut.entries),
            "sub_networks_timed": len(configs),
            "kendall_tau": tau,
            "predicted_ms": pred,
            "measured_ms": real,
        }
        say(f"latency table: Kendall tau {tau:.3f} on {len(configs)} sub-networks timed whole")
    _write_json(supernet_dir(run.dir) / PREDICTORS, out)
    return out


def prepare(run: Run, progress: bool = True) -> SupernetProblem:
    """Before the search: the supernet trained (or resumed, or loaded) and, when latency is
    measured, the latency table filled; return the problem the search scores with."""
    net = train_stage(run, progress)
    prob = SupernetProblem(run.exp, run.dir, run.splits)
    if prob.lut is not None:
        prob.lut.fill(net, _sayer(progress))
    return prob


def after_search(run: Run, progress: bool = True) -> None:
    """After the search: the front saved (and fine-tuned), the predictors checked."""
    save_front(run, progress)
    finetune = run.exp.search.supernet.finetune
    if finetune > 0:
        from nas.finalize import finalize
        from nas.run_folder import select_points

        points = select_points(run, run.feasible_front(), "front")
        finalize(run, points, epochs=finetune, start="search-weights", progress=progress)
    predictors(run, progress)


def _sayer(progress: bool) -> Callable[[str], None]:
    return (lambda m: print(f"[supernet] {m}", flush=True)) if progress else (lambda m: None)


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
