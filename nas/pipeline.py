"""ONE trial of an experiment: build -> cheap metrics -> train -> compress -> fine-tune ->
measure -> save.

This module is the only place that orders these steps. Objectives see the model as it will be
exported. Cheap metrics come first so that a hard constraint rejects a candidate before training.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

from nas.compress import Context, Criterion, Settings, Technique, as_deployed, parse_compression
from nas.compress.distill import TEACHER_LOGITS
from nas.config import Bound, Experiment, TrainConfig
from nas.data import Split, Splits, chance_floor, load_data
from nas.errors import NasError
from nas.front import NOT_APPLIED
from nas.search._fidelity import MOASHA
from nas.search._problem import Rejected
from nas.space import Space, build_model, check_output, resolve_space
from nas.teacher import LARGEST, check_teacher, teacher_logits
from nas.train import evaluate, seed_everything, total_steps, train
from nas.weights import save_trial
from objectives import OBJECTIVES, MeasureContext, Objective, directions

REPORTED = ("flops", "params", "size_bytes")  # cheap: every trial records them


def resolve_objectives(exp: Experiment) -> dict[str, Objective]:
    """Every metric the search measures: the objectives, then constrained metrics not among them,
    then the cheap costs of :data:`REPORTED` (recorded, never optimised unless named)."""
    names = list(exp.objectives) + [c for c in exp.constraints if c not in exp.objectives]
    names += [n for n in REPORTED if n not in names]
    return {n: OBJECTIVES.get(n) for n in names}


CALIBRATION_EXAMPLES = 512


@dataclass
class Step:
    """One technique of a candidate's compression plan, with its sampled knobs."""

    technique: Technique
    settings: Settings
    knobs: dict[str, Any]


@dataclass
class Candidate:
    """A sampled architecture and its compression plan (techniques in application order)."""

    model: nn.Module
    plan: list[Step]

    def describe(self) -> dict[str, dict[str, Any]]:
        """What compresses the model (training options such as distillation are not in it)."""
        return {s.technique.name: s.knobs for s in self.plan if not s.technique.training_only}


@dataclass
class ExperimentProblem:
    """An experiment as a search problem (see :class:`nas.search.Problem`).

    The order of one trial, here and nowhere else:

    1. build the architecture, then sample each technique's knobs (define-by-run);
    2. cheap metrics on the model as it will be exported (structure from the knobs; slimming's
       channel choice depends on trained gammas, so its cheap metrics are estimates) -> a
       violated hard constraint rejects the candidate before training;
    3. train, with every technique's loss hooks (e.g. slimming's BN-gamma L1) and a training
       option's loss (distillation from the run's cached teacher);
    4. apply the techniques in ``nas.compress.ORDER``, then fine-tune;
    5. build the deployed model (int8 ONNX at 8 bits) and measure every metric on it;
    6. save the weights (and the whole module when compression changed its structure).
    """

    exp: Experiment
    run_dir: Path
    splits: Splits | None = None
    space: Space = field(init=False)
    directions: dict[str, str] = field(init=False)
    constraints: dict[str, Bound] = field(init=False)
    metrics: dict[str, Objective] = field(init=False)
    techniques: list[tuple[Technique, Settings]] = field(init=False)
    # epoch progress of training (``nas finalize`` prints it; a search shows trials instead)
    announce: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        self.space = resolve_space(self.exp.space.name)
        self.directions = directions(self.exp)
        self.constraints = dict(self.exp.constraints)
        self.metrics = resolve_objectives(self.exp)
        self.techniques = parse_compression(self.exp.compression)
        if self.splits is None:
            self.splits = load_data(self.exp.data)
        if "accuracy" in self.metrics:  # a model no better than guessing is never on a front
            floor = chance_floor(self.data.val, self.data.num_classes)
            have = self.constraints.get("accuracy")
            if have is None or have.min is None or have.min < floor:
                self.constraints["accuracy"] = Bound(min=floor, max=have.max if have else None)

    @property
    def data(self) -> Splits:
        assert self.splits is not None
        return self.splits

    def context(self) -> Context:
        calib = self.data.train.head(CALIBRATION_EXAMPLES)
        return Context(self.data.input_shape, calib.x, calib_y=calib.y)

    def _ctx(self, name: str, split: Split | None, onnx: bytes | None) -> MeasureContext:
        spec = self.exp.objectives.get(name)
        return MeasureContext(self.data.input_shape, split, spec.args if spec else {}, onnx)

    def sample(self, trial: optuna.trial.BaseTrial) -> Candidate:
        shape = self.data.input_shape
        # the initial weights: the same trial number and params give the same model in any
        # process (torch's default seed differs per process)
        torch.manual_seed(self.exp.search.seed + int(getattr(trial, "number", 0) or 0))
        model = build_model(
            self.space,
            trial,
            input_shape=shape,
            num_classes=self.data.num_classes,
            args=self.exp.space.args,
        )
        plan = []
        for tech, settings in self.techniques:
            reason = tech.not_applicable(model, shape)
            if reason is not None and settings.optional:
                continue  # the search may leave it out: this architecture goes without it
            if reason is not None:
                raise Rejected(f"{tech.name} cannot apply: {reason}", {})
            knobs = tech.sample(trial, settings, model, shape)
            if knobs is not None:
                plan.append(Step(tech, settings, knobs))
        return Candidate(model, plan)

    def measure(
        self,
        model: nn.Module,
        *,
        trained: bool | None,
        split: Split | None,
        onnx: bytes | None = None,
    ) -> dict[str, float]:
        """Metrics whose ``needs_training`` equals ``trained`` (all of them for ``None``); a
        metric only recorded (:data:`REPORTED`, not an objective or constraint) that cannot be
        measured on this model (e.g. fvcore cannot trace it) is left out, never fails the trial."""
        asked = set(self.exp.objectives) | set(self.exp.constraints)
        out = {}
        for n, o in self.metrics.items():
            if trained is not None and o.needs_training != trained:
                continue
            try:
                out[n] = o.measure(model, self._ctx(n, split, onnx))
            except Exception:
                if n in asked:
                    raise
        return out

    def static(self, candidate: Candidate) -> dict[str, float]:
        model, ctx = candidate.model, self.context()
        for step in candidate.plan:
            model = step.technique.estimate(model, step.knobs, ctx)
        return self.measure(as_deployed(model, candidate.describe()), trained=False, split=None)

    def epochs(self) -> float:
        """The training budget in epochs (``train.steps`` converted when given)."""
        cfg = self.exp.train
        per_epoch = math.ceil(len(self.data.train) / cfg.batch_size)
        return total_steps(cfg, len(self.data.train)) / per_epoch

    @property
    def scheduler(self) -> MOASHA | None:
        """MO-ASHA on epochs when the experiment asks for it (``search.fidelity``)."""
        f = self.exp.search.fidelity
        if f is None:
            return None
        total = self.epochs()
        return MOASHA(min_budget=f.min_epochs or total / f.eta**2, eta=f.eta, max_budget=total)

    def _rung_reports(
        self, model: nn.Module, report: Callable[[float, Mapping[str, float]], None]
    ) -> Callable[[int, int], None] | None:
        """An ``on_step`` for training that reports validation accuracy at each rung."""
        scheduler = self.scheduler
        if scheduler is None or "accuracy" not in self.directions:
            return None
        per_epoch = math.ceil(len(self.data.train) / self.exp.train.batch_size)
        total = self.epochs()
        rungs = {max(1, math.ceil(r * per_epoch)): r for r in scheduler.rungs_between(0, 0, total)}

        def on_step(step: int, steps: int) -> None:
            if step in rungs:
                report(rungs[step], {"accuracy": evaluate(model, self.data.val)})

        return on_step

    def epoch_progress(self, number: int) -> Callable[[int, int], None]:
        """An ``on_step`` that announces each finished epoch of trial ``number``."""
        per_epoch = math.ceil(len(self.data.train) / self.exp.train.batch_size)
        announce = self.announce
        assert announce is not None
        t0 = time.perf_counter()

        def on_step(step: int, steps: int) -> None:
            if step % per_epoch == 0 or step == steps:
                done, total = step / per_epoch, steps / per_epoch
                left = (time.perf_counter() - t0) * (steps - step) / step
                announce(
                    f"trial {number}: epoch {done:.3g}/{total:.3g} trained ({left:.0f} s left)"
                )

        return on_step

    def _criterion(
        self, candidate: Candidate, trial: optuna.trial.BaseTrial, ctx: Context
    ) -> Criterion | None:
        """The training loss of a training option (distillation), else None (cross-entropy)."""
        steps = [s for s in candidate.plan if s.technique.training_only]
        if not steps:
            return None
        (step,) = steps  # one training option per experiment (distill)
        trial.set_user_attr(step.technique.name, step.knobs)
        spec = str(step.knobs["teacher"])
        ctx.extra[TEACHER_LOGITS] = teacher_logits(self.exp, self.data, self.run_dir, spec)
        return step.technique.criterion(step.knobs, ctx)

    def evaluate(
        self,
        candidate: Candidate,
        trial: optuna.trial.BaseTrial,
        report: Callable[[float, Mapping[str, float]], None] | None = None,
    ) -> dict[str, Any]:
        seed = self.exp.search.seed + trial.number
        seed_everything(seed)
        model, cfg, ctx = candidate.model, self.exp.train, self.context()
        plan = [s for s in candidate.plan if not s.technique.training_only]
        criterion = self._criterion(candidate, trial, ctx)
        hooks = [h for step in plan for h in step.technique.loss_hooks(step.knobs, ctx)]
        rungs = self._rung_reports(model, report) if report is not None else None
        hooks_each_step = [h for s in plan for h in s.technique.step_hooks(s.knobs, model, ctx)]
        if rungs is not None:
            hooks_each_step.append(rungs)
        if self.announce is not None:
            hooks_each_step.append(self.epoch_progress(trial.number))

        def on_step(step: int, steps: int) -> None:
            for hook in hooks_each_step:
                hook(step, steps)

        t0 = time.perf_counter()
        stats = train(
            model,
            self.data.train,
            cfg,
            seed=seed,
            loss_hooks=hooks,
            on_step=on_step if hooks_each_step else None,
            criterion=criterion,
        )
        trial.set_user_attr("train_seconds", time.perf_counter() - t0)
        trial.set_user_attr("train_steps", stats["steps"])
        trial.set_user_attr("device", stats["device"])
        where = {n: o.measured_on(self._ctx(n, None, None).args) for n, o in self.metrics.items()}
        if any(where.values()):
            trial.set_user_attr("measured_on", {n: w for n, w in where.items() if w})
        trial.set_user_attr("precision", stats["precision"])
        if plan:
            trial.set_user_attr("compression", candidate.describe())
            trial.set_user_attr("accuracy_before_compression", evaluate(model, self.data.val))
            model = compress(model, plan, ctx)
            if model.nas_not_applied:
                trial.set_user_attr("compression", model.nas_compression)
                trial.set_user_attr(NOT_APPLIED, model.nas_not_applied)
            epochs = max(
                [s.settings.finetune for s in plan] + [s.technique.min_finetune for s in plan]
            )
            if epochs > 0:
                t0 = time.perf_counter()
                train(
                    model,
                    self.data.train,
                    finetune_config(cfg, epochs),
                    seed=seed + 1,
                    criterion=criterion,
                )
                trial.set_user_attr("finetune_seconds", time.perf_counter() - t0)
        compression = model.nas_compression if plan else {}  # the techniques that applied
        return self.finish(model, compression, ctx, trial.number)

    def finish(
        self, model: nn.Module, compression: Mapping[str, Any], ctx: Context, number: int
    ) -> dict[str, Any]:
        """A trained (and compressed, fine-tuned) model: baked, deployed, measured, saved."""
        model = finish_sparse(model, compression)
        plain = as_deployed(model, compression)
        onnx = int8_onnx(plain, compression, ctx)
        metrics = self.measure(plain, trained=None, split=self.data.val, onnx=onnx)
        # reported, never optimised: the deployed model on the test split
        test_ctx = MeasureContext(self.data.input_shape, self.data.test, {}, onnx)
        metrics["test_accuracy"] = OBJECTIVES.get("accuracy").measure(plain, test_ctx)
        # the whole module too when params alone cannot rebuild it: compression changed its
        # shapes, or it came from outside the run folder (a pretrained model)
        whole = bool(compression) or self.exp.space.name == "pretrained"
        save_trial(model, self.run_dir, number, structural=whole)
        return metrics


def compress(model: nn.Module, plan: list[Step], ctx: Context) -> nn.Module:
    """Apply the plan's techniques in order; tag the result with what was applied
    (``nas_compression``) and, in ``nas_not_applied``, the techniques whose knobs changed nothing
    (e.g. a slimming ratio too small to remove one ``round_to`` group of channels): they are not
    in the compression record, so a front never shows a knob that did nothing."""
    applied, skipped = {}, {}
    for step in plan:
        # a technique that also acts along training (gradual pruning's step hooks) is judged by
        # neither: apply may only finish what training did
        judged = type(step.technique).step_hooks is Technique.step_hooks
        before = _fingerprint(model) if judged else None
        model = step.technique.apply(model, step.knobs, ctx)
        if judged and _fingerprint(model) == before:
            knobs = ", ".join(f"{k} {v}" for k, v in step.knobs.items() if not isinstance(v, dict))
            skipped[step.technique.name] = f"changed no layer or weight at {knobs or 'its knobs'}"
        else:
            applied[step.technique.name] = step.knobs
    model.nas_compression = applied  # type: ignore[assignment]
    model.nas_not_applied = skipped  # type: ignore[assignment]
    return model


def _fingerprint(model: nn.Module) -> tuple[Any, ...]:
    """What a technique can change: the layers (type, bit width, sparsity marks) and every tensor
    of the state dict (name, shape, a digest of the values)."""
    import hashlib

    marks = ("weight_bits", "sparse_weight", "weight_codebook_bits")
    layers = tuple(
        (name, type(m).__name__, *(getattr(m, k, None) for k in marks))
        for name, m in model.named_modules()
    )
    tensors = tuple(
        (
            name,
            tuple(t.shape),
            hashlib.blake2b(
                t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes(),
                digest_size=16,
            ).digest(),
        )
        for name, t in model.state_dict().items()
    )
    return layers, tensors


def finish_sparse(model: nn.Module, compression: Mapping[str, Any]) -> nn.Module:
    """After the fine-tune: masked / shared weights written back as plain weights (the model
    can then be saved whole), and a Deep Compression model's encoded size recorded."""
    from torch.nn.utils import parametrize

    if not any(parametrize.is_parametrized(m) for m in model.modules()):
        return model
    from nas.compress.sparse_ops import bake

    bake(model)
    if "deep_compression" in compression:
        from nas.compress.dc_format import encode

        model.nas_encoded_bytes = len(encode(model))  # type: ignore[assignment]
    return model


def finetune_config(cfg: TrainConfig, epochs: float) -> TrainConfig:
    return cfg.model_copy(
        update={"epochs": epochs, "steps": None, "lr": cfg.finetune_lr or cfg.lr / 3}
    )


def int8_onnx(
    plain: nn.Module,
    compression: Mapping[str, Any],
    ctx: Context,
    tune_batch: int | None = None,
) -> bytes | None:
    """The real int8 model deployed for a model quantized at 8 bits, else ``None`` (the deployed
    model is then the float export of ``plain``; below 8 bits its weights hold the dequantized
    values: simulated compute).

    ``plain`` is ``as_deployed(model, compression)``. int8: BN folded, onnxruntime static QDQ
    quantization calibrated on training data; with ``tune_batch`` the op types whose int8 kernel
    is slower at that batch stay float, decided by measurement (``nas export`` does this).
    """
    from nas.compress.int8_export import export_int8, export_int8_dynamic
    from nas.compress.quantize import is_int8

    knobs = compression.get("quantize")
    if "dfq" in compression:  # no data: dynamic quantization of the equalized model
        with tempfile.TemporaryDirectory() as tmp:
            return export_int8_dynamic(plain, ctx.input_shape, Path(tmp) / "int8.onnx").read_bytes()
    if "ptq" in compression:
        knobs = compression["ptq"]
    elif knobs is None or not is_int8(knobs):
        return None
    assert ctx.calib_x is not None
    with tempfile.TemporaryDirectory() as tmp:
        path = export_int8(
            plain,
            ctx.input_shape,
            ctx.calib_x,
            Path(tmp) / "int8.onnx",
            calibration=str(knobs.get("calibration", "minmax")),
            float_stem=knobs.get("stem", "float") == "float",
            tune_batch=tune_batch,
        )
        return Path(path).read_bytes()


PREFLIGHT_CANDIDATES = 5


def preflight(exp: Experiment, splits: Splits) -> None:
    """Fail fast on bad input before a run folder is touched.

    Builds a few random candidates: the space's args must work, and each compression technique
    must apply to at least one of them (a technique that applies to some candidates only is fine:
    the others are skipped with the reason recorded).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space, shape = resolve_space(exp.space.name), splits.input_shape
    techniques = parse_compression(exp.compression)
    reasons: dict[str, str | None] = {t.name: "" for t, _ in techniques}
    for i in range(PREFLIGHT_CANDIDATES if techniques else 1):
        try:
            model = build_model(
                space,
                study.ask(),
                input_shape=shape,
                num_classes=splits.num_classes,
                args=exp.space.args,
            )
        except NasError:
            raise
        except Exception as err:
            raise NasError(
                f"space {exp.space.name!r} raised {type(err).__name__}: {err}; fix "
                f"the space or its args"
            ) from None
        if i == 0:
            check_output(model, splits.val.head(2).x, splits.num_classes, exp.space.name)
        for tech, _ in techniques:
            if reasons[tech.name] is not None:
                reasons[tech.name] = tech.not_applicable(model, shape)
    for name, spec in exp.objectives.items():
        OBJECTIVES.get(name).check(spec.args)
    if exp.train.device != "auto":
        from nas.train import resolve_device

        resolve_device(exp.train.device)  # a device that is not here: one line, before any work
    for name, reason in reasons.items():
        if reason:
            raise NasError(
                f"compression.{name} cannot apply to space {exp.space.name!r} "
                f"({reason}); remove it or choose a space it applies to"
            )
    for tech, settings in techniques:
        teacher = settings.knobs.get("teacher")
        if tech.training_only and teacher is not None and teacher.fixed != LARGEST:
            check_teacher(str(teacher.fixed), splits)  # a given teacher must load and fit
    if "accuracy" in resolve_objectives(exp):  # last: the experiment's own mistakes come first
        floor = chance_floor(splits.val, splits.num_classes)
        if floor >= 1.0:
            raise NasError(
                f"the validation split has {len(splits.val)} example(s): too few to tell any "
                f"model from guessing (the front needs accuracy >= {floor:.2f}); give it more "
                f"(data.val_fraction, data.subset.val, or a val split of your dataset)"
            )
