"""Unstructured pruning, weight sharing, and Deep Compression's Huffman-coded model.dc."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from torch import nn

import nas
from nas.compress.dc_format import (
    DCFormatError,
    _canonical,
    _decode_stream,
    _encode_stream,
    decode,
    encode,
    huffman_lengths,
)
from nas.compress.sparse_ops import bake, prune_unstructured, share_weights, sparsity_of
from nas.compress.unstructured import gradual_hook
from nas.export import load_dc
from objectives import model_size_bytes
from tests.conftest import experiment


def _lenet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 300),
        nn.ReLU(),
        nn.Linear(300, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    ).eval()


def test_huffman_codes_are_prefix_free_and_round_trip() -> None:
    rng = random.Random(0)
    symbols = [min(int(rng.expovariate(0.3)), 40) for _ in range(5000)]
    lengths = huffman_lengths(symbols)
    assert sum(2.0**-n for n in lengths.values()) == pytest.approx(1.0)  # Kraft: complete
    codes = [format(c, f"0{n}b") for c, n in _canonical(lengths).values()]
    assert not any(a != b and b.startswith(a) for a in codes for b in codes)
    bits, table = _encode_stream(symbols)
    assert _decode_stream(bits, 0, len(symbols), table)[0] == symbols
    assert len(bits) < 8 * len(symbols)  # shorter than a byte per symbol


def test_dc_file_decodes_to_exactly_the_same_model() -> None:
    model = _lenet()
    prune_unstructured(model, 0.92, scope="layer")
    share_weights(model, 5)
    bake(model)
    data = encode(model)
    fp32 = 4 * sum(p.numel() for p in model.parameters())
    assert fp32 / len(data) > 25  # 8 % of the weights, 5-bit indices, Huffman-coded
    blank = _lenet()
    out = decode(data, blank)
    for name, t in model.state_dict().items():
        assert torch.equal(out.state_dict()[name], t), name
    x = torch.rand(8, 1, 28, 28)
    assert torch.equal(out(x), model(x))


def test_a_truncated_or_corrupt_dc_file_is_refused() -> None:
    model = bake(share_weights(prune_unstructured(_lenet(), 0.9, scope="layer"), 4))
    data = encode(model)
    bad = [data[: len(data) // 2], data[:-3], b"NOTDC" + data[5:]]
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    bad.append(bytes(flipped))
    for b in bad:
        with pytest.raises(DCFormatError) as e:
            decode(b, _lenet())
        assert "\n" not in str(e.value)


def test_criteria_remove_the_right_weights() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 0.5]]))
    m = prune_unstructured(nn.Sequential(*[l for l in model]), 1 / 12, scope="layer")  # noqa: E741
    assert m[0].weight[2, 3] == 0 and int((m[0].weight == 0).sum()) == 1
    # activation: input unit 0 is always 0, so its (large) weights go first
    act = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        act[0].weight.fill_(1.0)
    x = torch.rand(32, 4)
    x[:, 0] = 0
    y = torch.randint(0, 2, (32,))
    prune_unstructured(
        act, {"0": 0.25, "2": 0.0}, criterion="activation", scope="layer", data=(x, y)
    )
    assert (act[0].weight[:, 0] == 0).all() and (act[0].weight[:, 1:] != 0).all()
    with pytest.raises(ValueError, match="needs training examples"):
        prune_unstructured(_lenet(), 0.5, criterion="gradient")


def test_gradual_schedule_reaches_the_target_and_keeps_zeros_through_training() -> None:
    model = _lenet().train()
    hook = gradual_hook(model, 0.8, scope="global")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    seen = []
    for step in range(1, 101):
        loss = model(torch.rand(16, 1, 28, 28)).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        hook(step, 100)
        seen.append(sparsity_of(model))
    assert seen[10] == 0.0 and 0.0 < seen[30] < seen[50] < 0.8  # rising
    assert seen[-1] == pytest.approx(0.8, abs=0.01)


def test_sparse_and_shared_sizes_count_the_stored_format() -> None:
    dense = model_size_bytes(_lenet())
    sparse = bake(prune_unstructured(_lenet(), 0.9))
    # 10 % of the weights as CSR (value + 16-bit column) plus the biases
    assert model_size_bytes(sparse) < 0.2 * dense
    shared = bake(share_weights(_lenet(), 4))
    assert model_size_bytes(shared) < 0.15 * dense  # 4-bit indices + codebooks
    with pytest.raises(ValueError, match="fewer than the 2\\^8 = 256 shared values"):
        share_weights(nn.Sequential(nn.Linear(4, 3)), 8)


def test_deep_compression_trials_export_model_dc(tmp_path: Path) -> None:
    exp = experiment(
        tmp_path,
        compression={"deep_compression": {"sparsity": 0.8, "bits": 4, "finetune": 1}},
        objectives={"accuracy": "maximize", "size_bytes": "minimize"},
        search__trials=2,
        search__workers=1,
        search__sampler="random",
    )
    run = nas.run(str(exp), out=tmp_path / "run", progress=False)
    dirs = run.front().export(tmp_path / "out", select="front", progress=False)
    for d in dirs:
        m = json.loads((d / "metrics.json").read_text())
        size = (d / "model.dc").stat().st_size
        assert m["search"]["size_bytes"] == m["exported"]["size_bytes"] == size
        assert m["exported"]["dc_ratio_vs_fp32"] > 3  # a tiny mlp: biases weigh; LeNet: the bench
        model = load_dc(d)
        whole = torch.load(d / "model.pt", weights_only=False)
        x = torch.rand(16, 1, 8, 8)
        assert torch.equal(model(x), whole.eval()(x))


def test_sparse_weights_file_is_csr_and_round_trips(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from nas.compress.sparse_ops import from_sparse_state, to_sparse_state

    model = bake(prune_unstructured(_lenet(), 0.9))
    state = to_sparse_state(model)
    assert "1.weight.values" in state and "1.weight" not in state
    save_file(state, str(tmp_path / "s.safetensors"))
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "d.safetensors")
    )
    assert (tmp_path / "s.safetensors").stat().st_size < 0.25 * (
        tmp_path / "d.safetensors"
    ).stat().st_size
    again = from_sparse_state(load_file(str(tmp_path / "s.safetensors")), _lenet())
    for name, t in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], t)


def test_unstructured_trials_search_criteria_and_schedules(tmp_path: Path) -> None:
    exp = experiment(
        tmp_path,
        compression={
            "unstructured": {
                "sparsity": [0.6, 0.85],
                "criterion": ["magnitude", "gradient", "activation"],
                "schedule": ["oneshot", "gradual"],
                "finetune": 1,
            }
        },
        objectives={"accuracy": "maximize", "size_bytes": "minimize"},
        search__trials=3,
        search__workers=1,
        search__sampler="random",
        search__seed=3,
    )
    run = nas.run(str(exp), out=tmp_path / "run", progress=False)
    done = [t for t in run.study().get_trials() if t.state.name == "COMPLETE"]
    assert len(done) == 3
    for t in done:
        model = torch.load(
            tmp_path / "run" / "weights" / f"trial-{t.number:05d}.pt", weights_only=False
        )
        knobs = t.user_attrs["compression"]["unstructured"]
        assert sparsity_of(model) == pytest.approx(knobs["sparsity"], abs=0.02)
    (d,) = run.front().export(tmp_path / "out", select=str(done[0].number), progress=False)
    m = json.loads((d / "metrics.json").read_text())
    assert m["exported"]["sparse_file_bytes"] < (d / "weights.safetensors").stat().st_size


def test_surgery_prunes_splices_and_lets_masked_weights_learn() -> None:
    from nas.compress.sparse_ops import harden, surgery_step

    model = nn.Sequential(nn.Linear(10, 10))
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(100, dtype=torch.float32).reshape(10, 10) / 100)
    surgery_step(model, 0.5)
    mask = model[0].parametrizations.weight[0].mask
    assert mask.flatten()[:45].sum() == 0 and mask.flatten()[56:].min() == 1  # band kept as it was
    x = torch.rand(4, 10)
    model(x).sum().backward()
    original = model[0].parametrizations.weight.original
    assert original.grad.flatten()[:45].abs().sum() > 0  # masked weights still get gradients
    with torch.no_grad():
        original[0, 0] = 5.0  # a pruned weight grew: it is spliced back
    surgery_step(model, 0.5)
    assert mask[0, 0] == 1
    harden(model)
    assert (model[0].weight == 0).sum() >= 44


def test_lottery_rewind_resets_survivors_to_early_weights() -> None:
    from nas.compress import Context, get

    tech = get("unstructured")
    knobs = {"sparsity": 0.8, "criterion": "magnitude", "schedule": "rewind"}
    model = _lenet().train()
    (hook,) = tech.step_hooks(knobs, model, Context((1, 28, 28)))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    early = None
    for step in range(1, 41):
        loss = nn.functional.cross_entropy(model(torch.rand(8, 1, 28, 28)), torch.zeros(8).long())
        opt.zero_grad()
        loss.backward()
        opt.step()
        hook(step, 40)
        if step == 2:
            early = model[1].weight.detach().clone()
    out = tech.apply(model, knobs, Context((1, 28, 28)))
    w = out[1].weight.detach()
    kept = w != 0
    assert sparsity_of(out) == pytest.approx(0.8, abs=0.01)
    assert torch.equal(w[kept], early[kept])  # the survivors are back at step 2 (5 % of 40)
    with pytest.raises(ValueError, match="no early weights"):
        tech.apply(_lenet(), knobs, Context((1, 28, 28)))


def test_shared_weights_file_packs_indices_and_round_trips(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from nas.compress.sparse_ops import from_shared_state, to_shared_state

    model = bake(share_weights(_lenet(), 3))
    state = to_shared_state(model)
    assert state["1.weight.index"].numel() == 784 * 300 * 3 // 8  # 3 bits a weight
    save_file(state, str(tmp_path / "s.safetensors"))
    again = from_shared_state(load_file(str(tmp_path / "s.safetensors")), _lenet())
    for name, t in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], t)


def test_l1_knob_drives_weights_towards_zero() -> None:
    from nas.compress import Context, get
    from nas.config import TrainConfig
    from nas.data import Split
    from nas.train import train

    tech, ctx = get("unstructured"), Context((1, 28, 28))
    assert tech.loss_hooks({"l1": 0.0}, ctx) == []
    (hook,) = tech.loss_hooks({"l1": 1e-4}, ctx)
    model = _lenet()
    expected = 1e-4 * sum(float(model[i].weight.detach().abs().sum()) for i in (1, 3, 5))
    assert float(hook(model).detach()) == pytest.approx(expected, rel=1e-5)
    torch.manual_seed(0)
    data = Split(torch.rand(256, 1, 28, 28), torch.randint(0, 10, (256,)))
    cfg = TrainConfig(epochs=3, lr=1e-3, batch_size=32)
    plain, sparse = _lenet(), _lenet()
    train(plain, data, cfg, seed=0)
    train(sparse, data, cfg, seed=0, loss_hooks=[hook])
    small = [float((m[1].weight.abs() < 1e-3).float().mean()) for m in (plain, sparse)]
    assert small[1] > 2 * small[0]


def test_weight_sharing_trial_exports_packed_indices(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from nas.compress.sparse_ops import from_shared_state

    exp = experiment(
        tmp_path,
        compression={"weight_sharing": {"bits": 3, "finetune": 1}},
        search__trials=1,
        search__workers=1,
    )
    run = nas.run(str(exp), out=tmp_path / "run", progress=False)
    (d,) = run.front().export(tmp_path / "out", select="front", progress=False)
    m = json.loads((d / "metrics.json").read_text())
    assert m["exported"]["shared_file_bytes"] < (d / "weights.safetensors").stat().st_size
    whole = torch.load(d / "model.pt", weights_only=False).eval()
    blank = copy_of(whole)
    again = from_shared_state(load_file(str(d / "weights.shared.safetensors")), blank)
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(again(x), whole(x))


def copy_of(model: nn.Module) -> nn.Module:
    import copy

    blank = copy.deepcopy(model)
    with torch.no_grad():
        for p in blank.parameters():
            p.zero_()
    return blank
