"""nas.data: built-in datasets, user datasets and their errors."""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from nas.config import DataConfig, Subset
from nas.data import Splits, load_data
from nas.errors import NasError

# name -> (input_shape, size of the train part before val is carved out, test size, is an image)
BUILTIN = {
    "digits": ((1, 8, 8), 1437, 360, True),
    "mnist5k": ((1, 28, 28), 4000, 1000, True),
    "mnist1d": ((1, 40), 4000, 1000, False),
    "fashion-mnist": ((1, 28, 28), 60000, 10000, True),
}


@functools.cache
def _load(name: str) -> Splits:
    return load_data(DataConfig(name=name))


@pytest.mark.parametrize("name", list(BUILTIN))
def test_builtin_dataset_splits(name: str) -> None:
    shape, n_train, n_test, is_image = BUILTIN[name]
    s = _load(name)
    assert s.name == name
    assert s.input_shape == shape
    assert s.num_classes == 10
    assert len(s.test) == n_test
    # val is carved from train: the sizes add up and val is 10 % (sklearn rounds up)
    assert len(s.train) + len(s.val) == n_train
    assert len(s.val) == math.ceil(0.1 * n_train)
    for split in (s.train, s.val, s.test):
        assert tuple(split.x.shape[1:]) == shape
        assert split.x.shape[0] == len(split)
        assert split.x.dtype == torch.float32
        assert split.y.dtype == torch.int64
        assert set(split.y.unique().tolist()) == set(range(10))
    if is_image:
        for split in (s.train, s.val, s.test):
            assert float(split.x.min()) >= 0.0
            assert float(split.x.max()) <= 1.0
        assert float(s.train.x.max()) > 0.5  # scaled to [0, 1], not to [0, 1/255]


@pytest.mark.parametrize("name", list(BUILTIN))
def test_val_split_is_identical_across_loads(name: str) -> None:
    first, second = _load(name), load_data(DataConfig(name=name))
    assert first is not second
    for a, b in ((first.train, second.train), (first.val, second.val), (first.test, second.test)):
        assert torch.equal(a.x, b.x)
        assert torch.equal(a.y, b.y)


def test_subset_limits_train_and_val_but_not_test() -> None:
    full = _load("digits")
    s = load_data(DataConfig(name="digits", subset=Subset(train=100, val=20)))
    assert (len(s.train), len(s.val), len(s.test)) == (100, 20, len(full.test))
    assert torch.equal(s.test.x, full.test.x)
    again = load_data(DataConfig(name="digits", subset=Subset(train=100, val=20)))
    assert torch.equal(s.train.x, again.train.x)
    assert torch.equal(s.val.y, again.val.y)


def test_subset_larger_than_split_keeps_everything() -> None:
    full = _load("digits")
    s = load_data(DataConfig(name="digits", subset=Subset(train=10**6)))
    assert len(s.train) == len(full.train)
    assert len(s.val) == len(full.val)


def test_fashion_mnist_missing_files(tmp_path: Path) -> None:
    with pytest.raises(NasError) as info:
        load_data(DataConfig(name="fashion-mnist", root=str(tmp_path)))
    msg = str(info.value)
    assert "\n" not in msg
    assert str(tmp_path) in msg
    assert "apt-get install dataset-fashion-mnist" in msg


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(NasError) as info:
        load_data(DataConfig(name="cifar-10"))
    msg = str(info.value)
    assert "'cifar-10'" in msg
    for name in [*BUILTIN, "imagefolder", "cifar10", "cifar100"]:
        assert name in msg


def test_mnist1d_unknown_arg() -> None:
    with pytest.raises(NasError, match=re.escape("mnist1d: unknown data.args key 'bogus'")):
        load_data(DataConfig(name="mnist1d", args={"bogus": 1}))


# --- user datasets -------------------------------------------------------------------------------

USER_DATASET = '''
import numpy as np


def two(n=100):
    """(train, test); x[i] encodes i so splits can be checked for overlap."""
    x = np.arange(n * 4, dtype=np.float64).reshape(n, 1, 4)
    y = (np.arange(n) % 10).astype(np.int32)
    return (x, y), (x[:30] + 0.5, y[:30])


def three():
    rng = np.random.default_rng(0)
    part = lambda n: (rng.random((n, 6)), np.arange(n) % 3)
    return part(40), part(12), part(9)


def broken():
    raise RuntimeError("no data today")
'''


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "mydata.py"
    path.write_text(USER_DATASET)
    return path


def test_user_dataset_train_test(user_file: Path) -> None:
    s = load_data(DataConfig(name=f"{user_file}:two"))
    assert s.input_shape == (1, 4)
    assert s.num_classes == 10
    assert (len(s.train), len(s.val), len(s.test)) == (90, 10, 30)
    assert s.train.x.dtype == torch.float32
    assert s.train.y.dtype == torch.int64
    # val is carved from train: disjoint, and together they are the whole train part
    train_ids = set((s.train.x[:, 0, 0] / 4).long().tolist())
    val_ids = set((s.val.x[:, 0, 0] / 4).long().tolist())
    assert not train_ids & val_ids
    assert train_ids | val_ids == set(range(100))
    # stratified: every class is in val once
    assert sorted(s.val.y.tolist()) == list(range(10))


def test_user_dataset_receives_data_args(user_file: Path) -> None:
    s = load_data(DataConfig(name=f"{user_file}:two", args={"n": 200}))
    assert (len(s.train), len(s.val)) == (180, 20)


def test_user_dataset_too_small_for_stratified_val(user_file: Path) -> None:
    # 50 examples, 10 classes, val_fraction 0.1 -> 5 val examples cannot hold all 10 classes
    with pytest.raises(NasError):
        load_data(DataConfig(name=f"{user_file}:two", args={"n": 50}))


def test_user_dataset_train_val_test(user_file: Path) -> None:
    s = load_data(DataConfig(name=f"{user_file}:three"))
    assert (len(s.train), len(s.val), len(s.test)) == (40, 12, 9)  # val used as given
    assert s.input_shape == (6,)
    assert s.num_classes == 3
    assert s.val.x.dtype == torch.float32


def test_user_dataset_function_that_raises(user_file: Path) -> None:
    with pytest.raises(NasError, match="RuntimeError: no data today"):
        load_data(DataConfig(name=f"{user_file}:broken"))


def test_user_dataset_file_that_raises_on_import(tmp_path: Path) -> None:
    path = tmp_path / "bad.py"
    path.write_text("raise ImportError('cannot load the data module')\n")
    with pytest.raises(NasError) as info:
        load_data(DataConfig(name=f"{path}:fn"))
    msg = str(info.value)
    assert str(path) in msg
    assert "on import" in msg
    assert "cannot load the data module" in msg


def test_user_dataset_missing_file(tmp_path: Path) -> None:
    with pytest.raises(NasError, match="does not exist"):
        load_data(DataConfig(name=f"{tmp_path / 'absent.py'}:fn"))


def test_user_dataset_wrong_return_shape(tmp_path: Path) -> None:
    path = tmp_path / "one.py"
    path.write_text("import numpy as np\ndef fn():\n    return (np.zeros((4, 2)), np.zeros(4))\n")
    # a bare (x, y) pair is two parts, but each part must itself be an (x, y) pair
    with pytest.raises(NasError):
        load_data(DataConfig(name=f"{path}:fn"))


def test_user_dataset_torch_dataset(tmp_path: Path) -> None:
    path = tmp_path / "tds.py"
    path.write_text(
        "import torch\n"
        "from torch.utils.data import TensorDataset\n"
        "def fn():\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    x, y = torch.rand(50, 3, generator=g), torch.arange(50) % 5\n"
        "    return TensorDataset(x, y), TensorDataset(x[:10], y[:10])\n"
    )
    s = load_data(DataConfig(name=f"{path}:fn"))
    assert (len(s.train), len(s.val), len(s.test)) == (45, 5, 10)
    assert s.num_classes == 5
    assert s.streamed  # a Dataset is streamed through a DataLoader, not copied into a tensor
    np.testing.assert_array_equal(s.test.labels(), np.arange(10) % 5)
    x, _, idx = next(iter(s.test.loader(4, workers=0)))
    assert x.shape == (4, 3) and idx.tolist() == [0, 1, 2, 3]
