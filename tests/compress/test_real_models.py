"""Every technique on real torchvision / timm networks at 32 x 32: what one trial of the pipeline
runs, for each (model, technique).

``not_applicable`` first: a refusal must be the expected one, one line, naming a layer or a type of
the model. Otherwise, as ``nas.pipeline.ExperimentProblem`` does: knobs sampled from the
technique's default settings (a ``FixedTrial`` at values that must compress), its loss hooks and
step hooks through two optimizer steps on a batch of 8 (distillation: its criterion; a technique
without hooks trains one step), BatchNorm statistics re-estimated (two steps leave them behind the
weights), ``nas.pipeline.compress``, the fine-tune step where the technique asks for one,
``finish_sparse``, ``as_deployed``; then the model must really have
changed (structural techniques: fewer parameters and other layer shapes; numeric ones: zeros,
shared values, signs or a weight grid), its fp32 ONNX export (BatchNorm folded, as ``nas export``
writes it) must reproduce it in onnxruntime, and an int8 model's ``int8_onnx`` must agree with the
float model.

The int8 models start from a base model trained for a few steps on images drawn around ten
class prototypes (BatchNorm statistics re-estimated on them), so that their predictions differ from
image to image (a random-init model gives one class, by near-tied logits, to every input). How far
int8 may be from the float model depends on the model: a batch-normalized network this far from
trained is chaotic (8-bit weights alone change half of a MobileNetV2's predictions, 5% of a
ResNet-18's logit range). So the int8 ONNX model is held to what 8-bit quantization costs THIS
model, simulated in torch (per-channel weights, per-tensor activations calibrated on the same
examples): its logit error within a few times the simulation's, its argmax agreement with the
float model no more than 20 points below the simulation's. A wrong scale, an ignored input or
channels mixed up are far outside both (a ResNet-18 must agree on at least 80% of the images).
"""

from __future__ import annotations

import copy
import functools
import re
from typing import Any

import optuna
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nas.compress import Context, get, list_techniques
from nas.compress.distill import TEACHER_LOGITS
from nas.compress.fusion import fold_bn, fuse_verified
from nas.compress.int8_export import int8_ops
from nas.compress.quant_ops import prepare_qat, quantizable_layers
from nas.compress.sparse_ops import prunable_weights, sparsity_of
from nas.onnx_utils import session, to_onnx
from nas.pipeline import Step, as_deployed, compress, finish_sparse, int8_onnx
from objectives import count_params

pytest.importorskip("torchvision")
pytest.importorskip("timm")

SHAPE = (3, 32, 32)
MODELS = ("resnet18", "mobilenet_v2", "efficientnet_b0", "vit_tiny_patch16_224")
TECHNIQUES = [t.name for t in list_techniques()]
BATCH = 8
# optimizer steps of training: two with a technique's hooks (loss, step, criterion), else one
HOOKED_STEPS, PLAIN_STEPS = 2, 1
BASE_STEPS = 4  # Adam steps of the int8 techniques' base model

# what each model refuses, and a piece of the one-line reason
REFUSES = {
    ("resnet18", "head_pruning"): "no attention layer",
    ("mobilenet_v2", "head_pruning"): "no attention layer",
    ("efficientnet_b0", "head_pruning"): "no attention layer",
    # every k x k conv of a MobileNet / EfficientNet is depthwise, the stem reads 3 channels
    ("mobilenet_v2", "tucker"): "17 grouped, e.g. features.1.conv.0.0 (groups=32)",
    ("mobilenet_v2", "cp"): "17 grouped, e.g. features.1.conv.0.0 (groups=32)",
    ("efficientnet_b0", "tucker"): "16 grouped, e.g. features.1.0.block.0.0 (groups=32)",
    ("efficientnet_b0", "cp"): "16 grouped, e.g. features.1.0.block.0.0 (groups=32)",
    # a ViT: LayerNorm, no BatchNorm (filter pruning shrinks its MLP and embedding widths); its
    # compute is in Linears (lowrank), its one conv is the 3-channel patch embedding
    ("vit_tiny_patch16_224", "slimming"): "no BatchNorm",
    ("vit_tiny_patch16_224", "tucker"): "patch_embed.proj (3 -> 192)",
    ("vit_tiny_patch16_224", "cp"): "patch_embed.proj (3 -> 192)",
}
# the searched knobs of each technique's default settings, at values that must compress
PARAMS: dict[str, dict[str, Any]] = {
    "distill": {"distill.temperature": 4.0, "distill.alpha": 0.5},
    "slimming": {"slimming.ratio": 0.3, "slimming.strength": 1e-4},
    "filter_pruning": {"filter_pruning.ratio": 0.3},
    "head_pruning": {"head_pruning.heads": 0.34, "head_pruning.neurons": 0.25},
    "lowrank": {"lowrank.rank": 0.25},
    "tucker": {"tucker.rank": 0.25},
    "cp": {"cp.rank": 0.25},
    "unstructured": {"unstructured.sparsity": 0.5},
    "dns": {"dns.sparsity": 0.6},
    "weight_sharing": {"weight_sharing.bits": 4},
    "deep_compression": {"deep_compression.sparsity": 0.8, "deep_compression.bits": 4},
    "binarize": {},
    "quantize": {"quantize.bits": 8},
    "ptq": {},
    "dfq": {},
}
# entries beyond the defaults, so that the training hooks run (gradual pruning, an L1 penalty)
RAW: dict[str, dict[str, Any]] = {"unstructured": {"schedule": "gradual", "l1": 1e-6}}
STRUCTURAL = {"slimming", "filter_pruning", "head_pruning", "lowrank", "tucker", "cp"}
INT8 = {"quantize", "ptq", "dfq"}  # quantize at 8 bits (PARAMS)
# fitting every conv of a ResNet-18 (Tucker-2 HOOI, CP-ALS) takes most of a minute
SLOW = {("resnet18", "tucker"), ("resnet18", "cp")}


def real_model(name: str) -> nn.Module:
    """A random-init torchvision / timm network for 3 x 32 x 32 inputs and 10 classes."""
    import timm
    import torchvision

    torch.manual_seed(0)
    if name == "resnet18":
        model = torchvision.models.resnet18(num_classes=10)
        model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)  # the CIFAR stem
        model.maxpool = nn.Identity()
    elif name in ("mobilenet_v2", "efficientnet_b0"):
        model = getattr(torchvision.models, name)(num_classes=10)
        model.features[0][0].stride = (1, 1)
    else:
        model = timm.create_model(
            name, pretrained=False, num_classes=10, img_size=SHAPE[1], patch_size=4
        )
    return model


def images(per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` noisy images around each of ten smooth class prototypes, and their labels."""
    protos = torch.Generator().manual_seed(0)
    noise = torch.Generator().manual_seed(seed)
    proto = F.interpolate(
        torch.rand(10, 3, 4, 4, generator=protos), size=SHAPE[1:], mode="bilinear"
    )
    y = torch.arange(10).repeat(per_class)
    x = proto[y] + 0.1 * torch.randn(len(y), *SHAPE, generator=noise)
    return x.clamp(0, 1), y


def _recalibrate(model: nn.Module, x: torch.Tensor) -> None:
    """BatchNorm running statistics set to those of ``x`` (eval mode then sees what training
    saw); the model is left in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average: the statistics of exactly these images
    model.train()
    with torch.no_grad():
        model(x)
    for bn, momentum in zip(bns, momenta, strict=True):
        bn.momentum = momentum
    model.eval()


@functools.cache
def _base(name: str) -> nn.Module:
    """``real_model(name)`` after a few steps on the prototypes, BatchNorm statistics re-estimated
    on them: confident, input-dependent logits."""
    model = real_model(name)
    x, y = images(2, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(BASE_STEPS):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    _recalibrate(model, x)
    return model


def base_model(name: str) -> nn.Module:
    return copy.deepcopy(_base(name))


def _names_a_part(reason: str, model: nn.Module) -> bool:
    """Whether ``reason`` names a layer of ``model`` or one of its module types (as a whole
    word: the layer ``fc`` is not named by ``fc1``)."""
    names = {n for n, _ in model.named_modules() if n} | {type(m).__name__ for m in model.modules()}
    return any(re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", reason) for n in names)


def _train(model: nn.Module, tech, knobs: dict[str, Any], ctx: Context) -> None:
    """What ``nas.train.train`` does with the technique: its loss hooks added to the loss (or its
    criterion replacing cross-entropy), its step hooks after each optimizer step."""
    x, y = images(1, seed=2)
    x, y = x[:BATCH], y[:BATCH]
    idx = torch.arange(BATCH)
    criterion = tech.criterion(knobs, ctx)
    loss_hooks = tech.loss_hooks(knobs, ctx)
    step_hooks = tech.step_hooks(knobs, model, ctx)
    steps = HOOKED_STEPS if criterion or loss_hooks or step_hooks else PLAIN_STEPS
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()
    for step in range(1, steps + 1):
        opt.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits, y) if criterion is None else criterion(logits, y, idx)
        for hook in loss_hooks:
            loss = loss + hook(model)
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
        for hook in step_hooks:
            hook(step, steps)
    model.eval()


def _finetune(model: nn.Module) -> None:
    """One step of plain training on the compressed model (QAT, straight-through signs, shared
    centroids and masks must train)."""
    x, y = images(1, seed=6)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    opt.zero_grad()
    loss = F.cross_entropy(model(x[:BATCH]), y[:BATCH])
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    _recalibrate(model, images(1, seed=1)[0])  # as after _train


def _layer_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def _assert_changed(technique: str, before: nn.Module, plain: nn.Module, knobs: dict) -> None:
    """The technique did what it says, never nothing."""
    if technique in STRUCTURAL:
        assert count_params(plain) < count_params(before)
        assert _layer_shapes(plain) != _layer_shapes(before)
    elif technique in ("unstructured", "dns"):
        assert sparsity_of(plain) >= knobs["sparsity"] - 0.01
    elif technique in ("weight_sharing", "deep_compression"):
        if technique == "deep_compression":
            assert sparsity_of(plain) >= knobs["sparsity"] - 0.01
            assert plain.nas_encoded_bytes < 4 * count_params(plain) / 8
        for n in prunable_weights(plain):
            values = plain.get_submodule(n).weight.detach().unique()
            assert len(values) <= 2 ** knobs["bits"] + 1, n  # + the pruned zero
    elif technique == "binarize":
        layers = get("binarize").eligible(before, SHAPE)
        assert layers
        for n in layers:
            m = plain.get_submodule(n)
            assert m.weight_bits == 1
            w = m.weight.detach().abs().reshape(m.weight.shape[0], -1)
            assert all(len(row.unique()) <= 2 for row in w), n  # alpha (and 0)
    elif technique == "quantize":
        layers = quantizable_layers(plain)
        assert layers
        for n in layers:
            m = plain.get_submodule(n)
            assert m.weight_bits == knobs["bits"]
            codes = m.weight.detach() / m.weight_scale.reshape(-1, *[1] * (m.weight.dim() - 1))
            assert float((codes - codes.round()).abs().max()) < 1e-3, n  # on the int grid
    elif technique == "ptq":
        assert all(plain.get_submodule(n).weight_bits == 8 for n in quantizable_layers(plain))
    elif technique == "dfq":  # BatchNorm folded (then equalized), every layer marked int8
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in plain.modules())
        assert all(plain.get_submodule(n).weight_bits == 8 for n in quantizable_layers(plain))
    else:
        assert technique == "distill", f"say what {technique} must change"


# A ViT a few steps from random init maps every image to one class (its tokens, after 12
# LayerNorms, barely depend on the input): the argmax agreement says little for it, the logit
# error bound still holds it.
ONE_CLASS = "VisionTransformer"


def _assert_int8_agrees(onnx: bytes, technique: str, plain: nn.Module, ctx: Context) -> None:
    """The int8 model runs in onnxruntime and is as close to the float model as 8-bit
    quantization of this model allows (see the module docstring)."""
    ops = int8_ops(onnx)
    if technique == "dfq":  # dynamic quantization: weights int8, activations quantized at run time
        assert "DynamicQuantizeLinear" in ops, ops
    else:
        assert "QuantizeLinear" in ops and "DequantizeLinear" in ops, ops
    x, _ = images(3, seed=3)
    sim = prepare_qat(fold_bn(plain), 8, act_bits=8).train()
    with torch.no_grad():
        sim(ctx.calib_x)  # activation ranges from the calibration examples
        simulated = sim.eval()(x).numpy()
        want = plain(x).numpy()
    got = session(onnx).run(None, {"input": x.numpy()})[0]
    if type(plain).__name__ != ONE_CLASS:
        assert len(set(want.argmax(1).tolist())) > 1, "the float model predicts one class"
    spread = float(want.max() - want.min())
    err, sim_err = float(abs(got - want).max()), float(abs(simulated - want).max())
    assert err <= max(4 * sim_err, 0.02 * spread), f"int8 logits off by {err:.3g} ({sim_err:.3g})"
    agree = float((got.argmax(1) == want.argmax(1)).mean())
    sim_agree = float((simulated.argmax(1) == want.argmax(1)).mean())
    assert agree >= sim_agree - 0.2, f"int8 agrees on {agree:.0%} of the images ({sim_agree:.0%})"


def _case(name: str, technique: str):
    marks = [pytest.mark.slow] if (name, technique) in SLOW else []
    return pytest.param(name, technique, id=f"{name}-{technique}", marks=marks)


@pytest.mark.parametrize(("name", "technique"), [_case(n, t) for n in MODELS for t in TECHNIQUES])
def test_technique_on_real_model(name: str, technique: str) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tech = get(technique)
    model = base_model(name) if technique in INT8 else real_model(name)
    reason = tech.not_applicable(model, SHAPE)
    if reason is not None:
        assert (name, technique) in REFUSES, f"{technique} refuses {name}: {reason}"
        assert REFUSES[name, technique] in reason
        assert "\n" not in reason and _names_a_part(reason, model), reason
        return
    assert (name, technique) not in REFUSES, f"{technique} applies to {name} now"

    settings = tech.parse(RAW.get(technique))
    knobs = tech.sample(optuna.trial.FixedTrial(PARAMS[technique]), settings, model, SHAPE)
    assert knobs is not None
    calib_x, calib_y = images(2, seed=4)
    ctx = Context(SHAPE, calib_x, calib_y=calib_y)
    if tech.training_only:  # distillation: the teacher's logits on the training examples
        ctx.extra[TEACHER_LOGITS] = torch.randn(BATCH, 10)
    before = copy.deepcopy(model)
    _train(model, tech, knobs, ctx)
    assert any(
        not torch.equal(a, b) for a, b in zip(before.parameters(), model.parameters(), strict=True)
    ), "the training steps changed nothing"
    # two steps leave BatchNorm's running statistics behind the weights, which a trained model's
    # are not (eval outputs of an EfficientNet then reach 1e4): re-estimated on the examples
    _recalibrate(model, images(1, seed=1)[0])
    trained = copy.deepcopy(model)

    plan = [] if tech.training_only else [Step(tech, settings, knobs)]
    out = compress(model, plan, ctx)
    compression = out.nas_compression
    if plan and max(settings.finetune, tech.min_finetune) > 0:  # the pipeline's fine-tune
        _finetune(out)
    out = finish_sparse(out, compression)
    plain = as_deployed(out, compression).eval()
    _assert_changed(technique, trained, plain, knobs)

    # the fp32 export as `nas export` writes it: BatchNorm folded (checked), then ONNX
    x, _ = images(1, seed=5)
    fused, _ = fuse_verified(plain, x)
    with torch.no_grad():
        want = plain(x).numpy()
    got = session(to_onnx(fused, SHAPE)).run(None, {"input": x.numpy()})[0]
    assert got.shape == (len(x), 10)
    diff = float(abs(got - want).max())
    assert diff <= 1e-4 * max(1.0, float(abs(want).max())), diff
    top2 = torch.from_numpy(want).topk(2, 1).values
    clear = (top2[:, 0] - top2[:, 1] > 10 * diff).numpy()  # not a float-rounding tie
    assert (got.argmax(1) == want.argmax(1))[clear].all()

    int8 = int8_onnx(plain, compression, ctx)
    if technique in INT8:
        assert int8 is not None
        _assert_int8_agrees(int8, technique, plain, ctx)
    else:
        assert int8 is None


def test_a_silent_head_of_timm_fused_qkv_goes_and_changes_nothing() -> None:
    """timm's Attention (one qkv Linear, rows q | k | v, each head by head): removing a head
    removes its rows from each third of qkv and its columns of proj, and attn_dim shrinks."""
    import timm

    from nas.compress.head_pruning_ops import attention_layers, prune_heads

    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, patch_size=4, depth=1
    ).eval()
    attn = model.blocks[0].attn  # 3 heads of 64
    with torch.no_grad():
        for third in range(3):
            attn.qkv.weight[third * 192 + 64 : third * 192 + 128] *= 1e-3
        attn.proj.weight[:, 64:128] = 0.0  # head 1 feeds nothing
    out = prune_heads(model, 0.34, 0.0)
    a = out.get_submodule(attention_layers(out)[0])
    assert (a.num_heads, a.attn_dim, a.qkv.out_features, a.proj.in_features) == (2, 128, 384, 128)
    x = torch.rand(2, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(out(x), model(x), atol=1e-5, rtol=0)
    got = session(to_onnx(out, SHAPE)).run(None, {"input": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), model(x).detach(), atol=1e-4, rtol=0)


def test_head_pruning_refuses_attention_it_cannot_shrink() -> None:
    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
            self.head = nn.Linear(16, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.attn(x, x, x)[0].mean(1))

    reason = get("head_pruning").not_applicable(Tokens(), (4, 16))
    assert reason is not None and "attn (MultiheadAttention)" in reason and "\n" not in reason
