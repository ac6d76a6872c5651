"""``torchvision`` and ``timm``: the networks users already have, as search spaces.

    space: {name: torchvision, args: {model: resnet18}}              # stage depths searched
    space: {name: torchvision, args: {model: mobilenet_v2}}          # width, expansion, depths
    space: {name: timm, args: {model: vit_tiny_patch16_224, patch_size: 4,
                               choices: {depth: [4, 6, 8], mlp_ratio: [2.0, 4.0]}}}
    space: {name: torchvision, args: {model: resnet18, weights: resnet18-cifar.pth}}

The family's own constructor choices are searched where it has them (``search: true``, the
default without weights): ResNet stage depths (``depth_s{i}``); MobileNetV2 ``width_mult``,
expansion and repeats per stage; MobileNetV3 ``width_mult``; EfficientNet ``width_mult`` and
``depth_mult``. ``choices: {kwarg: [values]}`` searches any other constructor argument
(categorical), and every other arg is passed to the constructor as it is (e.g. timm's
``img_size``, ``patch_size``).

Classes and input channels follow the data. ``stem``: ``cifar`` (a stride-1 first convolution, no
max-pool, a 3x3 first kernel when training from scratch) for small inputs, ``imagenet`` as
published, ``auto``: cifar up to 64 px. ``weights``: ``none`` (random init), ``default`` (the
published pretrained weights, from the torch hub / Hugging Face cache only: nothing downloads;
the stem then keeps its kernel, only its stride changes) or a checkpoint file (a state dict,
``.pth``/``.pt``/``.safetensors``, of the model as this space builds it with the same args, e.g.
one trained by ``nas`` or with ``stem: imagenet`` for a published-shape model; a classifier of
another size is re-initialised). Weights fix the architecture: nothing is searched with them.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

HUB_HINT = "or use weights: none (random init) or weights: PATH (a state-dict file)"


# ---- construction -------------------------------------------------------------------------------


def _closest(name: str, names: list[str], library: str) -> ValueError:
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = f"closest: {', '.join(close)}" if close else f"see {library}.list_models()"
    return ValueError(f"{library}: unknown model {name!r}; {hint}")


@cache
def _torchvision_names() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


RESNET_STAGES = {  # torchvision's published block repeats per stage
    "resnet18": ("BasicBlock", [2, 2, 2, 2]),
    "resnet34": ("BasicBlock", [3, 4, 6, 3]),
    "resnet50": ("Bottleneck", [3, 4, 6, 3]),
    "resnet101": ("Bottleneck", [3, 4, 23, 3]),
    "resnet152": ("Bottleneck", [3, 8, 36, 3]),
}


def _resnet(trial: optuna.trial.BaseTrial, name: str, kwargs: dict[str, Any]) -> nn.Module:
    from torchvision.models import resnet

    block, layers = RESNET_STAGES[name]
    depths = [trial.suggest_int(f"depth_s{i}", 1, n) for i, n in enumerate(layers)]
    return resnet.ResNet(getattr(resnet, block), depths, **kwargs)


def _mobilenet_v2(trial: optuna.trial.BaseTrial, kwargs: dict[str, Any]) -> nn.Module:
    from torchvision.models import MobileNetV2

    width = trial.suggest_categorical("width_mult", [0.35, 0.5, 0.75, 1.0])
    setting = []
    published = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1]]
    for i, (t, c, n, s) in enumerate([*published, [6, 160, 3, 2], [6, 320, 1, 1]]):
        if t > 1:
            t = trial.suggest_categorical(f"expand_s{i}", [3, 4, 6])
        if n > 1:
            n = trial.suggest_int(f"depth_s{i}", 1, n)
        setting.append([t, c, n, s])
    return MobileNetV2(width_mult=width, inverted_residual_setting=setting, **kwargs)


def _family(trial: optuna.trial.BaseTrial, name: str, kwargs: dict[str, Any]) -> nn.Module | None:
    """The family's searchable constructor choices (None: the family has none here)."""
    import torchvision

    if name in RESNET_STAGES:
        return _resnet(trial, name, kwargs)
    if name == "mobilenet_v2":
        return _mobilenet_v2(trial, kwargs)
    if name.startswith("mobilenet_v3"):
        width = trial.suggest_categorical("width_mult", [0.5, 0.75, 1.0])
        return torchvision.models.get_model(name, width_mult=width, **kwargs)
    if name.startswith("efficientnet_b"):
        from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf

        width = trial.suggest_categorical("width_mult", [0.5, 0.75, 1.0])
        depth = trial.suggest_categorical("depth_mult", [0.5, 0.75, 1.0])
        setting, last = _efficientnet_conf(name, width_mult=width, depth_mult=depth)
        return EfficientNet(setting, kwargs.pop("dropout", 0.2), last_channel=last, **kwargs)
    return None


def _construct(
    build: Callable[..., nn.Module], name: str, kwargs: dict[str, Any], library: str
) -> nn.Module:
    try:
        return build(name, **kwargs)
    except TypeError as err:
        raise ValueError(
            f"{library} model {name!r} does not take these args ({err}); check the space args"
        ) from None


# ---- weights ------------------------------------------------------------------------------------


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"weights: {str(path)!r} does not load as a state dict ({type(err).__name__}); save "
            f"it with torch.save(model.state_dict(), path) or as .safetensors"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"weights: {str(path)!r} holds a {type(state).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """Load ``state``; only the classifier (the last Linear) may differ in shape (another number
    of classes: it keeps its new initialisation). Anything else that differs is a ValueError."""
    own = model.state_dict()
    head = _last_linear_name(model)
    mismatched = [k for k in own if k in state and state[k].shape != own[k].shape]
    not_head = [k for k in mismatched if head is None or not k.startswith(head + ".")]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if not_head or missing or unexpected:
        detail = (
            f"shapes differ at {not_head[:3]}"
            if not_head
            else f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
        raise ValueError(
            f"weights {source} do not fit this model ({detail}); give the checkpoint of this "
            f"architecture (with search: false, and the same constructor args)"
        )
    model.load_state_dict({k: v for k, v in state.items() if k not in mismatched}, strict=False)
    return model


def _last_linear_name(model: nn.Module) -> str | None:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


def _torchvision_default(name: str) -> dict[str, torch.Tensor]:
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError):
        raise ValueError(f"torchvision: {name!r} has no published weights; {HUB_HINT}") from None
    filename = os.path.basename(weights.url)
    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not path.is_file():
        raise ValueError(
            f"torchvision: the default weights of {name!r} are not on this machine (nothing "
            f"downloads); put {filename} in {path.parent} (from {weights.url}), {HUB_HINT}"
        )
    return _state_dict(path)


def _timm_cached(timm: Any, model: str) -> str:
    """The local file of a timm model's published weights (the Hugging Face cache), or a
    ValueError that says where to put it: nothing downloads."""
    cfg = timm.models.get_pretrained_cfg(model)
    if cfg is not None and cfg.file and Path(cfg.file).is_file():
        return str(cfg.file)
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(hub_id, filename)
            if isinstance(found, str):
                return found
    where = (
        f"the Hugging Face cache (~/.cache/huggingface/hub, repo {hub_id})"
        if hub_id
        else ("a local file")
    )
    raise ValueError(
        f"timm: the default weights of {model!r} are not on this machine (nothing downloads); "
        f"put them in {where}, {HUB_HINT}"
    )


# ---- adaptation to the data ---------------------------------------------------------------------


def _first_conv(model: nn.Module) -> tuple[nn.Module, str, nn.Conv2d] | None:
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            parent_name, _, attr = name.rpartition(".")
            return model.get_submodule(parent_name), attr, m
    return None


def _replace_conv(conv: nn.Conv2d, **changes: Any) -> nn.Conv2d:
    args = {
        "in_channels": conv.in_channels,
        "out_channels": conv.out_channels,
        "kernel_size": conv.kernel_size,
        "stride": conv.stride,
        "padding": conv.padding,
        "groups": conv.groups,
        "bias": conv.bias is not None,
    } | changes
    return nn.Conv2d(**args)


def adapt(
    model: nn.Module, channels: int, side: int, stem: str, pretrained: bool, timm: bool
) -> nn.Module:
    """Input channels and a CIFAR-style stem (stride-1 first conv, no max-pool)."""
    found = _first_conv(model)
    if found is None:
        return model
    parent, attr, conv = found
    if conv.in_channels != channels and not timm:  # timm adapts through in_chans
        new = _replace_conv(conv, in_channels=channels)
        with torch.no_grad():  # keep pretrained filters: their mean over the RGB channels
            mean = conv.weight.mean(1, keepdim=True)
            new.weight.copy_(mean.expand(-1, channels, -1, -1) * 3 / channels)
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        setattr(parent, attr, new)
        conv = new
    if stem == "auto":
        stem = "cifar" if side <= 64 else "imagenet"
    # a convolutional stem (kernel wider than its stride) loses its down-sampling; a patchify
    # stem (a ViT's patch embedding: kernel == stride) is left as it is
    if stem == "cifar" and conv.kernel_size[0] > conv.stride[0] > 1:
        if conv.kernel_size[0] >= 7 and not pretrained:
            setattr(parent, attr, _replace_conv(conv, kernel_size=3, stride=1, padding=1))
        else:
            conv.stride = (1, 1)
        pool = getattr(model, "maxpool", None)
        if isinstance(pool, nn.MaxPool2d):
            model.maxpool = nn.Identity()
    return model


def _check_runs(model: nn.Module, input_shape: tuple[int, ...], num_classes: int, what: str):
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, *input_shape))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0][:160]
        raise ValueError(
            f"{what}: a {'x'.join(map(str, input_shape))} input is too small or the wrong shape "
            f"for this network ({first}); use a larger data.transforms.size, stem: cifar, or "
            f"another model"
        ) from None
    if tuple(out.shape) != (2, num_classes):
        raise ValueError(
            f"{what} maps inputs to {tuple(out.shape[1:])} outputs, not {num_classes} classes"
        )
    model.train()


def _choices(trial: optuna.trial.BaseTrial, choices: Mapping[str, Any] | None) -> dict[str, Any]:
    out = {}
    for key, values in (choices or {}).items():
        if not isinstance(values, list) or not values:
            raise ValueError(
                f"choices.{key} must be a non-empty list of constructor values, got {values!r}"
            )
        out[key] = trial.suggest_categorical(key, values)
    return out


def _check_image_shape(input_shape: tuple[int, ...], what: str) -> tuple[int, int]:
    if len(input_shape) != 3:
        raise ValueError(
            f"{what} takes images (C, H, W); this dataset's inputs are {tuple(input_shape)}"
        )
    return input_shape[0], min(input_shape[1:])


# ---- the spaces ---------------------------------------------------------------------------------


def torchvision_space(
    trial: optuna.trial.BaseTrial,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    model: str,
    weights: str = "none",
    stem: str = "auto",
    search: bool | None = None,
    choices: Mapping[str, list[Any]] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """A torchvision classification model; its family's constructor choices searched."""
    import torchvision

    names = _torchvision_names()
    if model not in names:
        raise _closest(model, names, "torchvision")
    what = f"torchvision {model}"
    channels, side = _check_image_shape(input_shape, what)
    pretrained = weights != "none"
    _check_weights_search(weights, search, choices, what)
    kwargs = kwargs | _choices(trial, choices)
    if weights == "default":  # the published model: loaded first, then adapted to the data
        net = _construct(torchvision.models.get_model, model, kwargs, "torchvision")
        load_state(net, _torchvision_default(model), "default")
        head = _last_linear_name(net)
        if head is not None and net.get_submodule(head).out_features != num_classes:
            from search_spaces.pretrained import new_head

            net = new_head(net, num_classes)
        net = adapt(net, channels, side, stem, pretrained=True, timm=False)
    else:
        kwargs["num_classes"] = num_classes
        net = (
            _family(trial, model, dict(kwargs)) if not pretrained and search is not False else None
        ) or (_construct(torchvision.models.get_model, model, kwargs, "torchvision"))
        net = adapt(net, channels, side, stem, pretrained=False, timm=False)
        if pretrained:  # a checkpoint of the model as this space builds it (same args)
            load_state(net, _read(weights), f"{weights!r}")
    _check_runs(net, input_shape, num_classes, what)
    return net


def _read(path: str) -> dict[str, torch.Tensor]:
    p = Path(path)
    if not p.is_file():
        raise ValueError(
            f"weights: {path!r} is not a file; give a state-dict file, default (the published "
            f"weights, from the local cache) or none"
        )
    return _state_dict(p)


def _check_weights_search(
    weights: str, search: bool | None, choices: Mapping[str, Any] | None, what: str
) -> None:
    if weights != "none" and (search or choices):
        raise ValueError(
            f"{what}: weights fix the architecture, so nothing can be searched with them; "
            f"remove search/choices, or use weights: none"
        )


def timm_space(
    trial: optuna.trial.BaseTrial,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    model: str,
    weights: str = "none",
    stem: str = "auto",
    choices: Mapping[str, list[Any]] | None = None,
    search: bool | None = None,
    **kwargs: Any,
) -> nn.Module:
    """A timm model (any name of ``timm.list_models()``); ``choices`` searches its args."""
    import timm

    if not timm.is_model(model):
        raise _closest(model, timm.list_models(), "timm")
    what = f"timm {model}"
    channels, side = _check_image_shape(input_shape, what)
    _check_weights_search(weights, search, choices, what)
    kwargs = kwargs | _choices(trial, choices) | {"num_classes": num_classes, "in_chans": channels}
    default_size = getattr(timm.models.get_pretrained_cfg(model), "input_size", None)
    if "img_size" not in kwargs and default_size and default_size[-1] != side:
        kwargs["img_size"] = side  # ViT-like models take the input size; others ignore it
    pretrained = weights != "none"
    if weights == "default":
        kwargs["pretrained_cfg_overlay"] = {"file": _timm_cached(timm, model)}
    net = _timm_create(timm, model, kwargs, weights == "default")
    net = adapt(net, channels, side, stem, weights == "default", timm=True)
    if pretrained and weights != "default":  # a checkpoint of the model as this space builds it
        load_state(net, _read(weights), f"{weights!r}")
    _check_runs(net, input_shape, num_classes, what)
    return net


def _timm_create(timm: Any, model: str, kwargs: dict[str, Any], pretrained: bool) -> nn.Module:
    try:
        return timm.create_model(model, pretrained=pretrained, **kwargs)
    except TypeError as err:
        if "img_size" in kwargs and "img_size" in str(err):
            rest = {k: v for k, v in kwargs.items() if k != "img_size"}
            return _timm_create(timm, model, rest, pretrained)
        raise ValueError(
            f"timm model {model!r} does not take these args ({err}); check the space args"
        ) from None
