"""The elastic MobileNet supernet: sub-networks by slicing, extracted as smaller standalone
models that compute the same function."""

from __future__ import annotations

import re

import pytest
import torch

from nas.supernet import ElasticCNN, ElasticMobileNet, Stage
from objectives import count_flops, count_params

SHAPE = (1, 28, 28)


def _supernet(seed: int = 0, cls: type[ElasticMobileNet] = ElasticMobileNet) -> ElasticMobileNet:
    torch.manual_seed(seed)
    net = cls(SHAPE, 10, stages=(Stage(16, 3, 2), Stage(24, 3, 2)), head=32)
    # non-trivial BN statistics and kernel transforms, as after training
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        for name, p in net.named_parameters():
            if "transforms" in name:
                p.add_(0.05 * torch.randn_like(p))
    return net.eval()


@pytest.mark.parametrize("cls", [ElasticMobileNet, ElasticCNN])
@pytest.mark.parametrize("seed", range(6))
def test_extracted_subnet_computes_what_the_supernet_computes(
    seed: int, cls: type[ElasticMobileNet]
) -> None:
    net = _supernet(cls=cls)
    config = net.sample(torch.Generator().manual_seed(seed))
    net.set_active(config)
    x = torch.rand(4, *SHAPE)
    with torch.no_grad():
        inside = net(x)
        sub = net.extract(config).eval()
        alone = sub(x)
    torch.testing.assert_close(alone, inside, atol=1e-5, rtol=1e-5)
    assert not any(type(m).__name__.startswith("Elastic") for m in sub.modules())
    assert count_params(sub) <= count_params(net)


def test_smaller_configs_are_physically_smaller() -> None:
    net = _supernet()
    big, small = net.extract(net.largest()), net.extract(net.smallest())
    assert count_params(small) < count_params(big) / 3
    assert count_flops(small, SHAPE) < count_flops(big, SHAPE) / 3
    depthwise = [m for m in small.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert depthwise and all(m.kernel_size == (3, 3) for m in depthwise)


def test_small_kernels_train_their_transform() -> None:
    net = _supernet().train()
    config = net.largest()
    config["kernel"] = [[3, 3, 3], [3, 3, 3]]
    net.set_active(config)
    net(torch.rand(4, *SHAPE)).sum().backward()
    block = net.blocks[0][0].depthwise
    assert block.transforms["3"].grad is not None and block.transforms["5"].grad is not None
    assert block.weight.grad is not None and block.weight.grad[:, :, 0, 0].abs().sum() == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"depth": [4, 1]}, "depth[0]=4 is outside the supernet; allowed: [1, 2, 3]"),
        ({"width": [16, 20]}, "width[1]=20 is outside the supernet; allowed: [12, 18, 24]"),
        ({"kernel": [[9, 3, 3], [3, 3, 3]]}, "kernel[0][0]=9 is outside the supernet"),
        ({"expand": [[2, 2, 2], [5, 2, 2]]}, "expand[1][0]=5 is outside the supernet"),
        ({"depth": [1]}, "depth needs one entry per stage (2)"),
    ],
)
def test_a_subnet_outside_the_ranges_names_the_dimension(change: dict, message: str) -> None:
    net = _supernet()
    config = {**net.largest(), **change}
    with pytest.raises(ValueError, match=re.escape(message)):
        net.set_active(config)


def test_extracted_subnet_exports_to_onnx(tmp_path) -> None:
    from nas import onnx_utils

    net = _supernet()
    sub = net.extract(net.sample(torch.Generator().manual_seed(1))).eval()
    onnx_utils.to_onnx(sub, SHAPE, tmp_path / "sub.onnx")
    x = torch.rand(3, *SHAPE)
    out = onnx_utils.session(tmp_path / "sub.onnx").run(None, {"input": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), sub(x).detach(), atol=1e-4, rtol=1e-4)


def test_the_elastic_cnn_cuts_full_convolutions() -> None:
    net = _supernet(cls=ElasticCNN)
    big, small = net.extract(net.largest()), net.extract(net.smallest())
    convs = [m for m in small.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.groups == 1 for m in convs)  # plain convolutions, no depthwise
    assert [m.kernel_size for m in convs if m.kernel_size != (1, 1)][1:] == [(3, 3)] * (
        len(convs) - 2
    )
    assert count_flops(small, SHAPE) < count_flops(big, SHAPE) / 3
    with pytest.raises(ValueError, match="no expansion ratio"):
        ElasticCNN(SHAPE, 10, expansions=(2, 4))
    # the 3x3 kernel of a full convolution trains the 5x5's transform too
    net.train()
    config = net.largest()
    config["kernel"] = [[3, 3, 3], [3, 3, 3]]
    net.set_active(config)
    net(torch.rand(4, *SHAPE)).sum().backward()
    conv = net.blocks[0][0].conv
    assert conv.transforms["3"].grad is not None and conv.weight.grad[:, :, 0, 0].abs().sum() == 0
