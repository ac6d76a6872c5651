"""Tucker-2 and CP decomposition of conv kernels (TensorLy)."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import torch
from torch import nn

from nas.compress.decompose_ops import CPConv, Tucker2, decompose, decompose_layer, eligible_convs
from nas.onnx_utils import session, to_onnx
from objectives import count_flops, count_params
from search_spaces.cnn import cnn

SHAPE = (1, 28, 28)


def _conv(**kw: object) -> nn.Conv2d:
    torch.manual_seed(0)
    return nn.Conv2d(12, 16, (3, 5), **kw).eval()


def test_tucker2_at_full_rank_is_the_conv() -> None:
    conv = _conv(stride=(2, 1), padding=(1, 2), bias=True)
    seq = decompose_layer(conv, "tucker2", (16, 12))
    assert isinstance(seq, Tucker2)
    assert [m.kernel_size for m in seq] == [(1, 1), (3, 5), (1, 1)]
    x = torch.randn(2, 12, 9, 11)
    with torch.no_grad():
        torch.testing.assert_close(seq(x), conv(x), atol=1e-4, rtol=1e-4)


def test_cp_recovers_a_rank_r_kernel_with_strides_and_padding() -> None:
    torch.manual_seed(0)
    r = 4
    a, b, c, d = torch.randn(16, r), torch.randn(12, r), torch.randn(3, r), torch.randn(5, r)
    conv = _conv(stride=(2, 1), padding=(1, 2), bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.einsum("or,ir,hr,wr->oihw", a, b, c, d))
    seq = decompose_layer(conv, "cp", r)
    assert isinstance(seq, CPConv)
    assert [m.kernel_size for m in seq] == [(1, 1), (3, 1), (1, 5), (1, 1)]
    assert seq[1].groups == seq[2].groups == r
    x = torch.randn(2, 12, 9, 11)
    with torch.no_grad():
        want, got = conv(x), seq(x)
    assert float((got - want).norm() / want.norm()) < 1e-3


@pytest.mark.parametrize("method", ["tucker2", "cp"])
def test_decompose_a_cnn_is_smaller_and_exports(method: str) -> None:
    params = {"depth": 3, "batch_norm": True}
    params |= {f"width_{i}": 32 for i in range(3)} | {f"kernel_{i}": 3 for i in range(3)}
    params |= {"pool_0": "max", "pool_1": "max", "pool_2": "none"}
    model = cnn(optuna.trial.FixedTrial(params), input_shape=SHAPE, num_classes=10).eval()
    names = eligible_convs(model, SHAPE, method)
    assert names and "features.0" not in names  # the 1-channel stem is too small
    out = decompose(model, method, 0.25, SHAPE).eval()
    assert count_flops(out, SHAPE) < 0.6 * count_flops(model, SHAPE)
    assert count_params(out) < count_params(model)
    kind = Tucker2 if method == "tucker2" else CPConv
    assert sum(isinstance(m, kind) for m in out.modules()) == len(names)
    x = torch.rand(4, *SHAPE)
    y = session(to_onnx(out, SHAPE)).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(y, out(x).detach().numpy(), atol=1e-4)
    # the shape estimate (no fitting) is exact
    est = decompose(model, method, 0.25, SHAPE, fit=False)
    assert count_params(est) == count_params(out)
    assert count_flops(est, SHAPE) == count_flops(out, SHAPE)


def test_decompose_bad_input() -> None:
    model = cnn(
        optuna.trial.FixedTrial({"depth": 1, "width_0": 16, "kernel_0": 3, "pool_0": "none"}),
        input_shape=SHAPE,
        num_classes=10,
    )
    with pytest.raises(ValueError, match="cannot be decomposed: 'nope'"):
        decompose(model, "cp", 0.5, SHAPE, per_layer={"nope": 0.5})
    with pytest.raises(ValueError, match=r"ratio in \(0, 1\]"):
        decompose(model, "cp", 0.0, SHAPE)
    with pytest.raises(ValueError, match="unknown decomposition 'svd'"):
        decompose(model, "svd", 0.5, SHAPE)
