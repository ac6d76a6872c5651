"""Experiment schema and YAML loading.

An experiment is data, never code: one YAML file validated by this schema. Every error names the
key, the value and the fix, on one line (raised as :class:`nas.errors.NasError`).
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nas.errors import NasError

Direction = Literal["maximize", "minimize"]
SAMPLERS = ("auto", "tpe", "nsga2", "nsga3", "random", "gp")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Subset(_Strict):
    """Search-time fidelity: train and score on fewer examples (final numbers use full splits)."""

    train: int | None = Field(None, gt=0)
    val: int | None = Field(None, gt=0)


class TransformsConfig(_Strict):
    """Preprocessing of streamed image data (``torchvision.transforms.v2``).

    Evaluation: resize the shorter side to ``resize``, centre-crop ``size``. Training: ``crop``
    (``random_resized``: RandomResizedCrop to ``size``; ``pad``: resize + centre-crop, then a
    random ``size`` crop of the image padded by ``pad``; ``none``: as evaluation), optional
    horizontal flip and ``augment``. Then values in [0, 1], normalised by ``mean`` / ``std``.
    """

    size: int | None = Field(None, gt=0)  # default: the first image's shorter side
    resize: int | None = Field(None, gt=0)  # default: size (size * 8/7 when size >= 64)
    crop: Literal["auto", "random_resized", "pad", "none"] = "auto"  # auto: pad below 64 px
    pad: int = Field(4, ge=0)
    hflip: bool = True
    augment: Literal["none", "trivial", "randaugment"] = "none"
    color: Literal["rgb", "gray"] = "rgb"
    mean: list[float] | None = None  # default: ImageNet's for RGB, 0.5 for gray
    std: list[float] | None = None

    @model_validator(mode="after")
    def _check(self) -> TransformsConfig:
        channels = 3 if self.color == "rgb" else 1
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and len(value) != channels:
                raise ValueError(
                    f"{key} needs one value per channel ({channels} for color {self.color}), "
                    f"got {value}"
                )
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"std values must be > 0, got {self.std}")
        return self


class LoaderConfig(_Strict):
    """``torch.utils.data.DataLoader`` settings for streamed data (image folders, CIFAR, user
    Datasets); the small built-in datasets are held in memory and ignore them."""

    workers: int = Field(2, ge=0)
    pin_memory: bool | Literal["auto"] = "auto"  # auto: when training on CUDA
    persistent_workers: bool = True
    prefetch_factor: int | None = Field(None, gt=0)


class DataConfig(_Strict):
    name: str = "digits"
    root: str | None = None
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    subset: Subset | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    transforms: TransformsConfig | None = None  # streamed image data only
    loader: LoaderConfig = Field(default_factory=LoaderConfig)


class SpaceConfig(_Strict):
    name: str
    args: dict[str, Any] = Field(default_factory=dict)


class TrainConfig(_Strict):
    epochs: float = Field(1.0, gt=0)
    steps: int | None = Field(None, gt=0)
    batch_size: int = Field(128, gt=0)
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = Field(3e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "cosine", "step"] = "cosine"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    finetune_lr: float | None = Field(None, gt=0)  # fine-tune after compression; default lr / 3
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps (auto: the first CUDA GPU, else CPU)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast; fp16 with a GradScaler
    channels_last: bool = False
    compile: bool = False  # torch.compile the training forward pass

    @field_validator("device")
    @classmethod
    def _device_form(cls, v: str) -> str:
        import re

        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v):
            raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {v!r}")
        return v


class ObjectiveSpec(_Strict):
    direction: Direction | None = None
    args: dict[str, Any] = Field(default_factory=dict)


class Bound(_Strict):
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _check(self) -> Bound:
        if self.min is None and self.max is None:
            raise ValueError("a constraint needs min or max, e.g. {max: 2e6}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(
                f"min <= max must hold, but got (min={self.min}, max={self.max}); swap them"
            )
        return self


class FidelityConfig(_Strict):
    """MO-ASHA on training epochs: rungs at ``min_epochs * eta**k`` stop the hopeless early."""

    eta: float = Field(3.0, gt=1)
    min_epochs: float | None = Field(None, gt=0)  # default: the training budget / eta**2


class SupernetConfig(_Strict):
    """``search.mode: supernet``: train one elastic supernet, then score sub-networks with the
    weights they inherit (no training per candidate)."""

    epochs: float = Field(5.0, gt=0)  # supernet training, with the train recipe's optimizer/lr
    random_subnets: int = Field(2, ge=0)  # per step, beside the largest and the smallest
    calibration: int = Field(
        256, gt=0
    )  # training images to re-estimate BN statistics per candidate
    finetune: float = Field(0.0, ge=0)  # epochs each front model is fine-tuned before it is saved


class SearchConfig(_Strict):
    mode: Literal["train", "supernet"] = "train"
    supernet: SupernetConfig = Field(default_factory=SupernetConfig)
    trials: int = Field(20, gt=0)
    workers: int = Field(1, ge=1)
    sampler: Literal["auto", "tpe", "nsga2", "nsga3", "random", "gp"] = "auto"
    seed: int = 0
    storage: str | None = None
    timeout: float | None = Field(None, gt=0)
    threads_per_worker: int | None = Field(None, ge=1)
    heartbeat_seconds: int = Field(10, ge=1)  # database storages: a trial silent 3x this is lost
    max_rejections: int = Field(2000, ge=1)  # this many rejected candidates in a row: stop, say why
    backend: Literal["local", "ray"] = "local"
    address: str | None = None  # ray: "auto" joins a running cluster; None starts a local Ray
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    fidelity: FidelityConfig | None = None


class ExportConfig(_Strict):
    select: str | list[int] = "front"
    tolerance: float = Field(0.005, ge=0, le=1)
    latency_batch_size: int = Field(1, gt=0)


class Experiment(_Strict):
    name: str | None = None  # the run folder's name: runs/<name>
    description: str = ""
    data: DataConfig = Field(default_factory=DataConfig)
    space: SpaceConfig  # from base_model when that is given
    # a trained model to start from (transfer learning): the search explores its compression.
    # A path (export / run folder / model file), or {torchvision: NAME, checkpoint: FILE} /
    # {timm: NAME, checkpoint: FILE} (+ args: the model's constructor args)
    base_model: str | dict[str, Any] | None = None
    train: TrainConfig = Field(default_factory=TrainConfig)
    compression: dict[str, dict[str, Any] | None] = Field(default_factory=dict)
    objectives: dict[str, ObjectiveSpec]
    constraints: dict[str, Bound] = Field(default_factory=dict)
    search: SearchConfig = Field(default_factory=SearchConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)

    @field_validator("name")
    @classmethod
    def _folder_name(cls, v: str | None) -> str | None:
        import re

        if v is not None and not re.fullmatch(r"[^./\\\x00-\x1f][^/\\\x00-\x1f]*", v):
            raise ValueError(
                "must be a plain folder name (no / or \\, not starting with a dot): "
                "it names the run folder runs/<name>; use --out for another place"
            )
        return v

    @field_validator("space", mode="before")
    @classmethod
    def _space_shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("data", mode="before")
    @classmethod
    def _data_shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("objectives", mode="before")
    @classmethod
    def _objectives_forms(cls, v: Any) -> Any:
        # accepted: [accuracy, flops] | {accuracy: maximize} | {latency_ms: {args: {...}}}
        if isinstance(v, list):
            v = {name: None for name in v}
        if isinstance(v, dict):
            return {
                k: ({"direction": s} if isinstance(s, str) else (s or {})) for k, s in v.items()
            }
        return v

    @field_validator("objectives")
    @classmethod
    def _at_least_one(cls, v: dict[str, ObjectiveSpec]) -> dict[str, ObjectiveSpec]:
        if not v:
            raise ValueError("list at least one objective, e.g. [accuracy, flops]")
        return v

    @model_validator(mode="before")
    @classmethod
    def _space_or_base_model(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        base, space = data.get("base_model"), data.get("space")
        if base is not None:
            derived = _base_model_space(base)
            if space is not None and space != derived:
                raise ValueError(
                    "give space or base_model, not both: base_model starts from a trained model "
                    "(its architecture is fixed); remove one of them"
                )
            return {**data, "space": derived}
        return data  # no space either: reported as a missing required key

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _base_model_space(base: Any) -> dict[str, Any]:
    """The space a ``base_model`` stands for: ``pretrained`` for a path, the model-zoo space
    with the checkpoint as its weights for ``{torchvision|timm: NAME, checkpoint: FILE}``."""
    if not isinstance(base, dict):
        return {"name": "pretrained", "args": {"path": base}}
    form = (
        "write base_model as {torchvision: NAME, checkpoint: FILE} or {timm: NAME, checkpoint: "
        "FILE} (checkpoint: a state dict; default: the published weights from the local cache; "
        "args: the model's constructor args)"
    )
    libraries = [k for k in ("torchvision", "timm") if k in base]
    unknown = set(base) - {"torchvision", "timm", "checkpoint", "args"}
    if len(libraries) != 1 or unknown or not isinstance(base.get("args", {}), dict):
        raise ValueError(f"base_model {base!r}: {form}")
    lib = libraries[0]
    args = {"model": base[lib], "weights": str(base.get("checkpoint", "default"))}
    return {"name": lib, "args": {**args, **base.get("args", {})}}


def _valid_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed beside the last part of ``loc`` (walks models and dict-valued fields)."""
    model: Any = Experiment
    parts = list(loc[:-1])
    while parts:
        field = model.model_fields.get(parts.pop(0))
        ann = getattr(field, "annotation", None)
        if typing.get_origin(ann) is dict:  # e.g. objectives: dict[str, ObjectiveSpec]
            ann = typing.get_args(ann)[1]
            if parts:
                parts.pop(0)  # the entry's own name
        candidates = [ann, *typing.get_args(ann)]
        model = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if model is None:
            return []
    return list(model.model_fields)


def _format_error(source: str, err: ValidationError) -> str:
    errors = err.errors()
    # an unknown key is the likeliest root cause (e.g. a misspelt required key): report it first
    e = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
    loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
    if e["type"] == "extra_forbidden":
        valid = ", ".join(_valid_keys(tuple(e["loc"])))
        return f"{source}: unknown key {loc!r}; valid keys here are: {valid}"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "missing":
        msg = "this key is required; add it (see experiments/ for examples)"
    fix = _FIXES.get(e["type"])
    if fix:
        msg = f"{msg}; {fix}"
    got = e.get("input")
    shown = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
    return f"{source}: {loc}: {msg}{shown}"


# how to fix the pydantic errors whose message says only what is wrong
_FIXES = {
    "dict_type": "write a mapping of keys, e.g. {key: value} (see experiments/ for examples)",
    "model_type": "write a mapping of keys, e.g. {max: 2e6} (see experiments/ for examples)",
    "list_type": "write a list, e.g. [a, b]",
    "float_parsing": "give a number",
    "float_type": "give a number",
    "int_parsing": "give a whole number",
    "int_type": "give a whole number",
    "int_from_float": "give a whole number",
    "bool_parsing": "give true or false",
    "bool_type": "give true or false",
    "string_type": "give a text value (quote it in YAML)",
    "finite_number": "give a finite number (not .nan or .inf)",
}


def parse_experiment(data: Any, source: str = "experiment") -> Experiment:
    """Validate a mapping as an :class:`Experiment`; raise NasError on the first problem."""
    if not isinstance(data, dict):
        raise NasError(f"{source}: the experiment must be a YAML mapping of keys, got {data!r}")
    try:
        return Experiment.model_validate(data)
    except ValidationError as err:
        raise NasError(_format_error(source, err)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise NasError(f"duplicate key {key!r} at line {line}; keep only one of them")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment YAML file."""
    p = Path(path)
    if not p.is_file():
        raise NasError(f"experiment file {str(p)!r} does not exist; pass the path of a YAML file")
    try:
        data = yaml.load(p.read_text(), Loader=_UniqueKeyLoader)
    except NasError as err:
        raise NasError(f"{p}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise NasError(f"{p}: invalid YAML{where}: {problem}; fix the syntax") from None
    except UnicodeDecodeError:
        raise NasError(f"{p} is not UTF-8 text; save the experiment file as UTF-8") from None
    except OSError as err:
        raise NasError(f"cannot read {p}: {err.strerror}; check its permissions") from None
    exp = parse_experiment(data, str(p))
    space = anchor_file_spec(exp.space.name, p.parent, "space")
    dataset = anchor_file_spec(exp.data.name, p.parent, "dataset")
    if space == exp.space.name and dataset == exp.data.name:
        return exp
    return exp.model_copy(
        update={
            "space": exp.space.model_copy(update={"name": space}),
            "data": exp.data.model_copy(update={"name": dataset}),
        }
    )


def anchor_file_spec(spec: str, base: Path, kind: str) -> str:
    """A relative ``file.py:fn`` is read from the experiment file's folder ``base``; the run
    folder freezes its absolute path so that resume, export and report work from any directory.

    (A path that exists only from the current directory is still taken, for experiments written
    before this rule.) Anything else is returned unchanged.
    """
    target, sep, attr = spec.rpartition(":")
    if not sep or not target.endswith(".py") or Path(target).is_absolute():
        return spec
    tried = [base / target, Path(target)]
    for path in tried:
        if path.is_file():
            return f"{path.resolve()}:{attr}"
    raise NasError(
        f"{kind} file {target!r} does not exist (tried {tried[0].resolve()}, relative to the "
        f"experiment file, and {tried[1].resolve()}); fix the path in {spec!r}"
    )
