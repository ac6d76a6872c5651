from __future__ import annotations

import optuna
import pytest
import torch
from torch import nn

from nas.compress.fusion import fold_bn, foldable_pairs
from search_spaces import cnn, mobilenet

optuna.logging.set_verbosity(optuna.logging.WARNING)


SHAPE = (1, 16, 16)  # small maps keep the eager forward passes fast


def _sample(space, seed: int, input_shape=SHAPE) -> nn.Module:
    torch.manual_seed(seed)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed)).ask()
    model = space(trial, input_shape=input_shape, num_classes=10)
    return _with_bn_statistics(model, input_shape)


def _with_bn_statistics(model: nn.Module, input_shape) -> nn.Module:
    """Non-trivial running stats and affine params, so folding has something to fold."""
    model.train()
    with torch.no_grad():
        model(torch.randn(4, *input_shape) * 2 + 0.5)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize(
    ("space", "seed"), [(cnn, 0), (cnn, 1), (cnn, 4), (mobilenet, 0), (mobilenet, 1)]
)
def test_fold_bn_is_exact_and_removes_every_batchnorm(space, seed):
    model = _sample(space, seed)
    n_bn = _count(model, nn.BatchNorm2d)
    assert n_bn > 0
    folded = fold_bn(model)
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=0)
    assert _count(folded, nn.BatchNorm2d) == 0
    assert _count(folded, nn.Identity) >= n_bn
    assert all(m.bias is not None for m in folded.modules() if isinstance(m, nn.Conv2d))
    assert not folded.training
    # the original is untouched
    assert _count(model, nn.BatchNorm2d) == n_bn
    assert folded is not model


def test_fold_bn_keeps_names_and_classes():
    model = _sample(cnn, 0)
    folded = fold_bn(model)
    assert type(folded) is type(model)
    conv_names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert [n for n, m in folded.named_modules() if isinstance(m, nn.Conv2d)] == conv_names


def test_fold_bn_conv1d():
    model = _sample(cnn, 2, input_shape=(2, 40))
    assert _count(model, nn.BatchNorm1d) > 0
    folded = fold_bn(model)
    x = torch.randn(4, 2, 40)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=0)
    assert _count(folded, nn.BatchNorm1d) == 0


class _Branching(nn.Module):
    """conv output feeds the BN *and* a residual: folding would change the residual."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


def test_conv_with_two_consumers_is_not_folded():
    model = _with_bn_statistics(_Branching(), (3, 8, 8))
    assert foldable_pairs(model) == []
    folded = fold_bn(model)
    assert isinstance(folded.bn, nn.BatchNorm2d)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x))


class _Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it; the Sequential fallback folds."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return y if y.sum() > 0 else -y


def test_untraceable_model_falls_back_to_sequential_pairs():
    model = _with_bn_statistics(_Untraceable(), (1, 6, 6))
    assert foldable_pairs(model) == [("body.0", "body.1")]
    folded = fold_bn(model)
    assert isinstance(folded.body[1], nn.Identity)
    x = torch.randn(2, 1, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=0)


class _LinearBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 8)
        self.bn = nn.BatchNorm1d(8)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.bn(self.fc(x))))


def test_linear_bn_is_folded_and_verified() -> None:
    from nas.compress.fusion import fuse_verified

    model = _with_bn_statistics(_LinearBN(), (12,))
    assert foldable_pairs(model) == [("fc", "bn")]
    folded, report = fuse_verified(model, torch.randn(32, 12))
    assert isinstance(folded.bn, nn.Identity)
    assert report["folded_pairs"] == 1 and report["max_abs_diff"] <= 1e-5
    x = torch.randn(5, 12)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=0)


def test_fusion_that_changes_outputs_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from nas.compress import fusion

    model = _with_bn_statistics(_LinearBN(), (12,))
    real = fusion._fold_into

    def wrong(conv: nn.Module, bn: nn.Module) -> None:
        real(conv, bn)
        conv.bias.data += 1e-3  # a folding bug

    monkeypatch.setattr(fusion, "_fold_into", wrong)
    with pytest.raises(RuntimeError, match="changed the model's outputs by up to"):
        fusion.fuse_verified(model, torch.randn(32, 12))


@pytest.mark.parametrize("space", ["cnn", "mobilenet", "mlp"])
def test_onnxruntime_fuses_relu_into_the_folded_conv(space: str, tmp_path) -> None:
    """conv + BN are folded by us; conv + ReLU by onnxruntime's optimizer (FusedConv)."""
    import onnx
    import onnxruntime as ort

    from nas.compress.fusion import fuse_verified
    from nas.onnx_utils import to_onnx
    from nas.space import resolve_space

    shape = (1, 16, 16)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    model = _with_bn_statistics(
        resolve_space(space)(trial, input_shape=shape, num_classes=10), shape
    )
    folded, report = fuse_verified(model, torch.randn(16, *shape))
    assert report["max_abs_diff"] <= 1e-5
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(to_onnx(folded, shape), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node]
    assert "BatchNormalization" not in ops
    if space != "mlp":
        assert "FusedConv" in ops, ops
