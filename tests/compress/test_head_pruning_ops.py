"""Attention-head and MLP-neuron pruning on the vit space."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import torch

from nas.compress.head_pruning_ops import attention_layers, mlp_layers, prune_heads
from nas.onnx_utils import session, to_onnx
from objectives import count_flops, count_params
from search_spaces.vit import vit

SHAPE = (1, 28, 28)


def _vit(heads: int = 4, depth: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    params = {"patch": 4, "embed": 32, "depth": depth, "heads": heads, "mlp_ratio": 2}
    return vit(optuna.trial.FixedTrial(params), input_shape=SHAPE, num_classes=10).eval()


def test_half_the_heads_and_neurons_physically_removed() -> None:
    model = _vit()
    assert attention_layers(model) == ["blocks.0.attn", "blocks.1.attn"]
    assert mlp_layers(model) == ["blocks.0.mlp", "blocks.1.mlp"]
    out = prune_heads(model, 0.5, 0.5)
    for n in attention_layers(out):
        a = out.get_submodule(n)
        assert a.num_heads == 2 and a.q.out_features == a.k.out_features == 16
        assert a.proj.in_features == 16 and a.proj.out_features == 32
    assert all(out.get_submodule(n).fc1.out_features == 32 for n in mlp_layers(out))
    assert count_flops(out, SHAPE) < 0.75 * count_flops(model, SHAPE)
    assert count_params(out) < 0.75 * count_params(model)
    x = torch.rand(4, *SHAPE)
    y = session(to_onnx(out, SHAPE)).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(y, out(x).detach().numpy(), atol=1e-4)


@pytest.mark.parametrize("criterion", ["l1", "taylor"])
def test_a_silent_head_and_neuron_go_first_and_removing_them_changes_nothing(
    criterion: str,
) -> None:
    model = _vit()
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    with torch.no_grad():
        for lin in (attn.q, attn.k, attn.v):
            lin.weight[8:16] *= 0.01  # head 1: tiny, and its output ignored
        attn.proj.weight[:, 8:16] = 0.0
        mlp.fc1.weight[5] *= 0.01
        mlp.fc2.weight[:, 5] = 0.0  # neuron 5 feeds nothing
    x = torch.rand(64, *SHAPE)
    y = torch.randint(0, 10, (64,))
    out = prune_heads(model, 0.25, 1 / 64, criterion=criterion, data=(x, y))
    a = out.blocks[0].attn
    assert a.num_heads == 3
    torch.testing.assert_close(
        a.proj.weight, torch.cat([attn.proj.weight[:, :8], attn.proj.weight[:, 16:]], 1)
    )
    assert out.blocks[0].mlp.fc1.out_features == 63
    # block 1 lost a head too (its least important), so compare block 0 alone
    x_tokens = torch.rand(2, 49, 32)
    torch.testing.assert_close(out.blocks[0].attn(x_tokens), attn(x_tokens), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.blocks[0].mlp(x_tokens), mlp(x_tokens), atol=1e-5, rtol=0)


def test_every_layer_keeps_a_head_and_bad_input() -> None:
    out = prune_heads(_vit(heads=1), 0.9, 0.9)
    assert all(out.get_submodule(n).num_heads == 1 for n in attention_layers(out))
    with pytest.raises(ValueError, match=r"heads must be a fraction in \[0, 1\)"):
        prune_heads(_vit(), 1.0, 0.0)
    with pytest.raises(ValueError, match="unknown criterion 'fpgm'"):
        prune_heads(_vit(), 0.5, 0.0, criterion="fpgm")
    with pytest.raises(ValueError, match="needs labelled training examples"):
        prune_heads(_vit(), 0.5, 0.0, criterion="taylor")
    with pytest.raises(ValueError, match="no attention layer"):
        prune_heads(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)), 0.5, 0.5)
