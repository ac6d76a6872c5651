"""Streamed image data: ImageFolder and CIFAR-format folders through a DataLoader, transforms,
the preprocessing record, and bad input (one line each)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nas.config import DataConfig, LoaderConfig, TransformsConfig
from nas.data import final_splits, load_data
from nas.errors import NasError
from nas.image_data import StreamSplit
from nas.image_writers import write_cifar, write_imagefolder

CLASSES = ["ant", "bee", "cat"]


def _images(n: int, seed: int, side: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Class c has mean brightness (c + 1) / 4, so labels are learnable and checkable."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(CLASSES)
    x = rng.integers(0, 40, (n, 3, side, side)) + (y[:, None, None, None] + 1) * 50
    return x.astype(np.uint8), y


@pytest.fixture
def folder(tmp_path):
    splits = {"train": _images(30, 0), "val": _images(9, 1), "test": _images(12, 2)}
    return write_imagefolder(tmp_path / "imgs", splits, CLASSES)


def _cfg(root, name="imagefolder", **kw) -> DataConfig:
    return DataConfig(name=name, root=str(root), loader=LoaderConfig(workers=0), **kw)


def test_imagefolder_splits_and_transforms(folder) -> None:
    s = load_data(_cfg(folder, transforms=TransformsConfig(size=8, hflip=False)))
    assert s.streamed and isinstance(s.train, StreamSplit)
    assert (len(s.train), len(s.val), len(s.test)) == (30, 9, 12)
    assert s.num_classes == 3 and s.input_shape == (3, 8, 8)
    assert s.preprocessing["center_crop"] == 8 and s.preprocessing["channel_order"] == "RGB"
    assert s.preprocessing["mean"] == pytest.approx([0.485, 0.456, 0.406])
    x, y, idx = next(iter(s.test.loader(12)))
    assert x.shape == (12, 3, 8, 8) and idx.tolist() == list(range(12))
    # normalised: class 2 is brighter than class 0 after (x - mean) / std
    assert x[y == 2].mean() > x[y == 0].mean() + 1.0
    np.testing.assert_array_equal(s.test.labels(), y.numpy())


def test_training_order_follows_the_seed(folder) -> None:
    s = load_data(_cfg(folder, transforms=TransformsConfig(size=8)))

    def order(seed: int) -> list[int]:
        loader = s.train.loader(10, shuffle=True, generator=torch.Generator().manual_seed(seed))
        return torch.cat([i for _, _, i in loader]).tolist()

    assert order(0) == order(0) != order(1)
    assert sorted(order(0)) == list(range(30))


def test_one_folder_is_split_with_the_fixed_seed(tmp_path) -> None:
    x, y = _images(60, 0)
    write_imagefolder(tmp_path / "one", {"all": (x, y)}, CLASSES)
    cfg = _cfg(tmp_path / "one" / "all", val_fraction=0.2)
    a, b = load_data(cfg), load_data(cfg)
    assert len(a.train) + len(a.val) + len(a.test) == 60
    assert len(a.test) == 12  # stratified: 4 per class
    np.testing.assert_array_equal(a.val.labels(), b.val.labels())
    seen = [set(p.parts[0][1].tolist()) for p in (a.train, a.val, a.test)]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])


def test_final_splits_join_train_and_val(folder) -> None:
    s = final_splits(_cfg(folder, subset={"train": 10}))
    assert len(s.train) == 30 + 9 and len(s.test) == 12
    assert sorted(torch.cat([i for _, _, i in s.train.loader(16)]).tolist()) == list(range(39))


def test_cifar_format_folder(tmp_path) -> None:
    train, test = _images(50, 0, side=32), _images(20, 1, side=32)
    write_cifar(tmp_path / "c" / "cifar-10-batches-py", train, test, CLASSES)
    for root in (tmp_path / "c", tmp_path / "c" / "cifar-10-batches-py"):
        s = load_data(_cfg(root, name="cifar10", transforms=TransformsConfig(hflip=False)))
        assert s.input_shape == (3, 32, 32) and s.num_classes == 10
        assert len(s.train) + len(s.val) == 50 and len(s.test) == 20
        np.testing.assert_array_equal(s.test.labels(), test[1])


def test_cifar_missing_files_say_which(tmp_path) -> None:
    (tmp_path / "data_batch_1").write_bytes(b"")
    with pytest.raises(NasError) as info:
        load_data(_cfg(tmp_path, name="cifar10"))
    msg = str(info.value)
    assert "data_batch_2" in msg and "test_batch" in msg and "nothing downloads" in msg
    assert "\n" not in msg


def test_cifar_batch_may_not_run_code(tmp_path) -> None:
    import pickle

    train, test = _images(10, 0, side=32), _images(5, 1, side=32)
    write_cifar(tmp_path, train, test, CLASSES)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "test_batch").write_bytes(pickle.dumps({"data": Evil(), "labels": [0]}))
    with pytest.raises(NasError, match="not a CIFAR python batch"):
        load_data(_cfg(tmp_path, name="cifar10"))


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda p: p / "absent", "does not exist"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "is empty"),
        (lambda p: (p / "c" / "ant").mkdir(parents=True) or p / "c", "sub-folder"),
    ],
    ids=["missing", "empty", "class-without-images"],
)
def test_bad_folders_are_one_line(tmp_path, make, needle) -> None:
    with pytest.raises(NasError) as info:
        load_data(_cfg(make(tmp_path)))
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_corrupt_image_is_skipped_and_named(folder, capfd) -> None:
    bad = sorted((folder / "test" / "bee").iterdir())[0]
    bad.write_bytes(b"not a png")
    s = load_data(_cfg(folder, transforms=TransformsConfig(size=8)))
    x, _, _ = next(iter(s.test.loader(12)))
    assert x.shape[0] == 12 and torch.isfinite(x).all()
    err = capfd.readouterr().err
    assert f"skipped an unreadable image {bad}" in err


def test_transforms_refused_for_in_memory_data() -> None:
    with pytest.raises(NasError, match=r"remove data\.transforms"):
        load_data(DataConfig(name="digits", transforms=TransformsConfig()))


def test_mean_std_must_match_the_channels() -> None:
    with pytest.raises(ValueError, match="one value per channel"):
        TransformsConfig(color="gray", mean=[0.5, 0.5, 0.5])


def test_gray_images_and_random_resized_crop(folder) -> None:
    t = TransformsConfig(size=8, color="gray", crop="random_resized", augment="trivial")
    s = load_data(_cfg(folder, transforms=t))
    assert s.input_shape == (1, 8, 8) and s.preprocessing["channel_order"] == "L"
    x, _, _ = next(iter(s.train.loader(8, shuffle=True, generator=torch.Generator())))
    assert x.shape == (8, 1, 8, 8)


def test_loader_workers_and_persistence(folder) -> None:
    cfg = DataConfig(
        name="imagefolder",
        root=str(folder),
        transforms=TransformsConfig(size=8),
        loader=LoaderConfig(workers=2, persistent_workers=True),
    )
    s = load_data(cfg)
    loader = s.train.loader(8, shuffle=True, generator=torch.Generator().manual_seed(0))
    epochs = [torch.cat([i for _, _, i in loader]).sort().values.tolist() for _ in range(2)]
    assert epochs[0] == epochs[1] == list(range(30))


def test_head_of_an_augmented_split_is_deterministic(folder) -> None:
    """int8 calibration reads ``train.head``: the same examples, evaluation-transformed, at
    search and at export (the training augmentation is random)."""
    s = load_data(_cfg(folder, transforms=TransformsConfig(size=8, crop="random_resized")))
    torch.testing.assert_close(s.train.head(8).x, s.train.head(8).x)
    a, b = (torch.cat([x for x, _, _ in s.train.loader(30)]) for _ in range(2))
    assert not torch.equal(a, b)  # training batches stay augmented
