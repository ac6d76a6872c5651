"""``elastic_mobilenet`` and ``elastic_cnn``: the sub-networks of an elastic supernet, as a space.

The same space serves both search modes:

- ``search.mode: train`` (the default): each trial's sub-network is built as a standalone model
  (random weights) and trained from scratch like any other space's model;
- ``search.mode: supernet``: the supernet (:class:`nas.supernet.ElasticMobileNet`) is trained
  once, and each trial's sub-network is scored with the weights it inherits (``nas.supernet``).

Either way the trial's params rebuild the model (``nas export`` and ``nas finalize`` as usual).

Params sampled from the trial (define-by-run, so a block's params exist only when the stage's
depth reaches it):
    width_s{i}        output channels of stage i, from ``max_width * width_mults``
    depth_s{i}        blocks in stage i, from ``depths``
    expand_s{i}_b{j}  expansion ratio of block j of stage i, from ``expansions``
    kernel_s{i}_b{j}  depthwise kernel of block j of stage i, from ``kernels``

Keyword args (the supernet's ranges; a dimension with one choice is fixed):
    elastic_mobilenet (inverted residuals): stages=[[24, 3, 2], [40, 3, 2], [64, 3, 2]]
    ([max_width, max_depth, first stride] per stage), stem=16, head=128, depths=(1, 2, 3),
    expansions=(2, 3, 4), kernels=(3, 5, 7), width_mults=(0.5, 0.75, 1.0);
    elastic_cnn (plain kxk convolutions, no expansion: ``expand_*`` is always 1):
    stages=[[16, 2, 2], [32, 2, 2], [64, 2, 2]], stem=16, head=128, depths=(1, 2),
    kernels=(3, 5), width_mults=(0.5, 0.75, 1.0).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

import optuna
from torch import nn

from nas.supernet.elastic import DEFAULT_STAGES, ElasticCNN, ElasticMobileNet, Stage

DEFAULTS: dict[str, dict[str, Any]] = {
    "mobilenet": {
        "stages": [[s.max_width, s.max_depth, s.stride] for s in DEFAULT_STAGES],
        "stem": 16,
        "head": 128,
        "depths": (1, 2, 3),
        "expansions": (2, 3, 4),
        "kernels": (3, 5, 7),
        "width_mults": (0.5, 0.75, 1.0),
    },
    "cnn": {
        "stages": [[16, 2, 2], [32, 2, 2], [64, 2, 2]],
        "stem": 16,
        "head": 128,
        "depths": (1, 2),
        "kernels": (3, 5),
        "width_mults": (0.5, 0.75, 1.0),
    },
}
_CLASSES: dict[str, type[ElasticMobileNet]] = {"mobilenet": ElasticMobileNet, "cnn": ElasticCNN}


def _supernet(kind: str, input_shape: tuple[int, ...], num_classes: int, **args: Any) -> Any:
    defaults = DEFAULTS[kind]
    unknown = sorted(set(args) - set(defaults))
    if unknown:
        raise ValueError(
            f"elastic_{kind}: unknown arg {unknown[0]!r}; valid args are: {', '.join(defaults)}"
        )
    kw = {**defaults, **args}
    stages = kw.pop("stages")
    try:
        parsed = [Stage(int(w), int(d), int(s)) for w, d, s in stages]
    except (TypeError, ValueError):
        raise ValueError(
            f"elastic_{kind}: stages must be a list of [max_width, max_depth, stride], "
            f"got {stages!r}; write e.g. [[24, 3, 2], [40, 3, 2]]"
        ) from None
    return _CLASSES[kind](tuple(input_shape), num_classes, stages=parsed, **kw)


def mobilenet_supernet(
    *, input_shape: tuple[int, ...], num_classes: int, **args: Any
) -> ElasticMobileNet:
    """A new (untrained) supernet covering every sub-network of ``elastic_mobilenet``."""
    return _supernet("mobilenet", input_shape, num_classes, **args)


def cnn_supernet(*, input_shape: tuple[int, ...], num_classes: int, **args: Any) -> ElasticCNN:
    """A new (untrained) supernet covering every sub-network of ``elastic_cnn``."""
    return _supernet("cnn", input_shape, num_classes, **args)


@functools.lru_cache(maxsize=8)
def _skeleton(key: str) -> ElasticMobileNet:
    """One supernet per kind, args and shapes in this process: sub-networks are cut from it."""
    spec = json.loads(key)
    return _supernet(**spec)


def skeleton(
    input_shape: tuple[int, ...], num_classes: int, args: Mapping[str, Any], kind: str = "mobilenet"
) -> ElasticMobileNet:
    key = json.dumps(
        {"kind": kind, "input_shape": list(input_shape), "num_classes": num_classes, **dict(args)},
        sort_keys=True,
        default=list,
    )
    return _skeleton(key)


def elastic_dimensions(net: ElasticMobileNet) -> list[str]:
    """The dimensions with more than one choice (a supernet needs at least one)."""
    dims = {
        "depths": net.depths,
        "expansions": net.expansions,
        "kernels": net.kernels,
        "width_mults": net.width_mults,
    }
    return [name for name, choices in dims.items() if len(choices) > 1]


def sample_config(trial: optuna.trial.BaseTrial, net: ElasticMobileNet) -> dict[str, Any]:
    """A sub-network configuration of ``net`` from the trial's params."""
    config: dict[str, Any] = {"depth": [], "width": [], "expand": [], "kernel": []}
    for i, stage in enumerate(net.stages):
        config["width"].append(trial.suggest_categorical(f"width_s{i}", list(net.widths[i])))
        depth = trial.suggest_categorical(f"depth_s{i}", list(net.depths))
        config["depth"].append(depth)
        # blocks beyond the depth are unused: the largest choice keeps the config valid
        expand, kernel = (
            [max(net.expansions)] * stage.max_depth,
            [max(net.kernels)] * stage.max_depth,
        )
        for b in range(depth):
            expand[b] = trial.suggest_categorical(f"expand_s{i}_b{b}", list(net.expansions))
            kernel[b] = trial.suggest_categorical(f"kernel_s{i}_b{b}", list(net.kernels))
        config["expand"].append(expand)
        config["kernel"].append(kernel)
    return config


def params_of(config: Mapping[str, Any]) -> dict[str, Any]:
    """The trial params that select ``config`` (the inverse of :func:`sample_config`)."""
    params: dict[str, Any] = {}
    for i, depth in enumerate(config["depth"]):
        params[f"width_s{i}"] = config["width"][i]
        params[f"depth_s{i}"] = depth
        for b in range(depth):
            params[f"expand_s{i}_b{b}"] = config["expand"][i][b]
            params[f"kernel_s{i}_b{b}"] = config["kernel"][i][b]
    return params


def _subnet(
    kind: str, trial: optuna.trial.BaseTrial, input_shape: tuple[int, ...], num_classes: int,
    args: Mapping[str, Any],
) -> nn.Module:  # fmt: skip
    net = skeleton(tuple(input_shape), num_classes, args, kind)
    config = sample_config(trial, net)
    model = net.extract(config)
    model.nas_subnet = config  # type: ignore[assignment]
    return model


def elastic_mobilenet(
    trial: optuna.trial.BaseTrial,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    **args: Any,
) -> nn.Module:
    """A sub-network of the elastic MobileNet (inverted residuals) as a standalone model
    (untrained weights); its configuration is kept as ``model.nas_subnet``."""
    return _subnet("mobilenet", trial, input_shape, num_classes, args)


def elastic_cnn(
    trial: optuna.trial.BaseTrial,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    **args: Any,
) -> nn.Module:
    """A sub-network of the elastic CNN (plain kxk convolutions) as a standalone model (untrained
    weights); its configuration is kept as ``model.nas_subnet``."""
    return _subnet("cnn", trial, input_shape, num_classes, args)


# what makes a space usable by ``search.mode: supernet``
elastic_mobilenet.supernet = mobilenet_supernet  # type: ignore[attr-defined]
# its args (taken as **args, passed to the supernet): `nas spaces` lists them with these defaults
elastic_mobilenet.defaults = DEFAULTS["mobilenet"]  # type: ignore[attr-defined]
elastic_cnn.defaults = DEFAULTS["cnn"]  # type: ignore[attr-defined]
elastic_cnn.supernet = cnn_supernet  # type: ignore[attr-defined]
