"""Tests of benchmarks.data: the CIFAR-100 reader, fixtures, fallback, loader and augmentation.

Nothing here touches the network: an autouse fixture makes every torchvision download fail.
"""

from __future__ import annotations

import pickle
import urllib.error
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.datasets.cifar as tv_cifar
from sklearn.neighbors import NearestCentroid

from kdbench.benchmarks.data import cifar100 as cifar_mod
from kdbench.benchmarks.data.augment import (
    crop_flip,
    normalize,
    normalize_coefficients,
    sample_crop_flip,
)
from kdbench.benchmarks.data.cifar100 import URL, cifar100
from kdbench.benchmarks.data.digits import digits
from kdbench.benchmarks.data.fixtures import (
    corrupt_cifar100,
    dump_py2_pickle,
    label_names,
    write_cifar100,
)
from kdbench.benchmarks.data.loader import BatchLoader
from kdbench.benchmarks.data.types import ImageSplit
from kdbench.benchmarks.errors import ConfigError, DatasetError
from kdbench.benchmarks.registry import DATASETS, lookup

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any download attempt fails the way an offline machine fails."""

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar100(root, n_train_per_class=6, n_test_per_class=3, seed=0)
    return root


def small_fixture(root: Path) -> Path:
    return write_cifar100(root, n_train_per_class=3, n_test_per_class=2, num_classes=10)


def raw_pickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def indexed_split(n: int, seed: int = 0) -> ImageSplit:
    """Random images whose label is their own index, so batches reveal which image they hold."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    return ImageSplit(images, torch.arange(n))


def collect(loader: BatchLoader) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(loader)
    return torch.cat([b.x for b in batches]), torch.cat([b.y for b in batches])


def unnormalize(x: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    return ((x * std + mean) * 255).round().to(torch.uint8)


# --- the CIFAR-100 reader and fixture format -------------------------------------------------


def test_round_trip_equals_what_was_written(fixture_root):
    ds = cifar100(str(fixture_root))
    folder = fixture_root / "cifar-100-python"
    for split, name, n in ((ds.train, "train", 600), (ds.test, "test", 300)):
        raw = raw_pickle(folder / name)
        keys = [b"batch_label", b"coarse_labels", b"data", b"filenames", b"fine_labels"]
        assert sorted(raw) == keys
        assert raw[b"data"].dtype == np.uint8 and raw[b"data"].shape == (n, 3072)
        assert split.images.dtype == torch.uint8 and split.images.shape == (n, 3, 32, 32)
        assert split.labels.dtype == torch.int64
        assert np.array_equal(split.images.numpy().reshape(n, -1), raw[b"data"])
        assert split.labels.tolist() == raw[b"fine_labels"]
        assert [c // 5 for c in raw[b"fine_labels"]] == raw[b"coarse_labels"]
        assert raw[b"filenames"][0].endswith(b".png") and b"_s_" in raw[b"filenames"][0]
    meta = raw_pickle(folder / "meta")
    assert len(meta[b"fine_label_names"]) == 100 and len(meta[b"coarse_label_names"]) == 20
    assert ds.class_names == label_names(100)[0] and ds.num_classes == 100
    assert Counter(ds.train.labels.tolist()) == dict.fromkeys(range(100), 6)
    assert ds.input_shape == (3, 32, 32) and ds.name == "cifar100"
    assert ds.mean == (0.5071, 0.4865, 0.4409) and ds.std == (0.2673, 0.2564, 0.2762)


def test_torchvision_reads_the_fixture_to_identical_arrays(fixture_root, monkeypatch):
    # torchvision compares every file with the official release's md5, which generated files
    # cannot match; skip only that check so the rest of its reader runs unchanged.
    monkeypatch.setattr(tv_cifar.CIFAR100, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    ds = cifar100(str(fixture_root))
    for train, ours in ((True, ds.train), (False, ds.test)):
        theirs = tv_cifar.CIFAR100(str(fixture_root), train=train, download=False)
        assert np.array_equal(theirs.data, ours.images.permute(0, 2, 3, 1).numpy())
        assert theirs.targets == ours.labels.tolist()
        assert theirs.classes == ds.class_names


def test_root_may_name_the_cifar_folder_itself(fixture_root):
    direct = cifar100(str(fixture_root / "cifar-100-python"))
    assert direct.fingerprint == cifar100(str(fixture_root)).fingerprint
    assert direct.root == str((fixture_root / "cifar-100-python").resolve())


def test_fixture_is_byte_identical_per_seed(tmp_path):
    a = small_fixture(tmp_path / "a")
    b = small_fixture(tmp_path / "b")
    c = write_cifar100(
        tmp_path / "c", n_train_per_class=3, n_test_per_class=2, num_classes=10, seed=1
    )
    for name in ("train", "test", "meta"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "train").read_bytes() != (c / "train").read_bytes()
    assert cifar100(str(a.parent)).fingerprint != cifar100(str(c.parent)).fingerprint


def test_fixture_is_labelled_synthetic(fixture_root):
    ds = cifar100(str(fixture_root))
    assert ds.data_source == "synthetic"
    assert "SYNTHETIC" in ds.notice


def test_official_checksums_mean_real(fixture_root, monkeypatch):
    folder = fixture_root / "cifar-100-python"
    md5 = {name: cifar_mod.read_split(folder / name, 100).md5 for name in ("train", "test")}
    monkeypatch.setattr(cifar_mod, "OFFICIAL_MD5", md5)
    ds = cifar100(str(fixture_root))
    assert ds.data_source == "real" and ds.notice is None


def test_unofficial_real_format_files_are_real_with_a_notice(tmp_path):
    folder = small_fixture(tmp_path)
    content = raw_pickle(folder / "train")
    content[b"batch_label"] = b"training batch 1 of 1"
    dump_py2_pickle(content, folder / "train")
    ds = cifar100(str(tmp_path))
    assert ds.data_source == "real"
    assert "differ from the official release" in ds.notice


def test_missing_without_fallback_says_where_and_how(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as err:
        cifar100(str(root))
    message = str(err.value)
    assert str(root.resolve() / "cifar-100-python") in message
    assert URL in message and "download=True" in message


def test_failed_download_is_reported_not_raised_raw(tmp_path):
    with pytest.raises(DatasetError, match=r"download=True failed .*network disabled"):
        cifar100(str(tmp_path), download=True)


def test_missing_with_fallback_generates_once_and_warns(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar_mod, "SYNTHETIC_TRAIN_PER_CLASS", 2)
    monkeypatch.setattr(cifar_mod, "SYNTHETIC_TEST_PER_CLASS", 1)
    writes = []

    def counting_writer(*args, **kwargs):
        writes.append(args)
        return write_cifar100(*args, **kwargs)

    monkeypatch.setattr(cifar_mod, "write_cifar100", counting_writer)
    root, cache = tmp_path / "no-data", tmp_path / "cache"
    first = cifar100(str(root), synthetic_fallback=True, cache_dir=str(cache))
    second = cifar100(str(root), download=True, synthetic_fallback=True, cache_dir=str(cache))
    assert len(writes) == 1
    assert first.data_source == second.data_source == "synthetic"
    assert first.fingerprint == second.fingerprint
    assert len(first.train) == 200 and len(first.test) == 100
    assert first.root.startswith(str(cache / "synthetic"))
    assert str(root.resolve()) in first.notice and "SYNTHETIC" in first.notice
    assert URL in first.notice
    assert "network disabled" in second.notice


@pytest.mark.parametrize(
    ("kind", "file", "says"),
    [
        ("truncate", "train", "truncated or corrupt"),
        ("truncate", "meta", "truncated or corrupt"),
        ("missing_key", "test", "fine_labels"),
        ("wrong_size", "train", "3000"),
    ],
)
def test_corrupt_file_names_the_file_and_the_fault(tmp_path, kind, file, says):
    folder = small_fixture(tmp_path)
    path = corrupt_cifar100(folder, file, kind)
    with pytest.raises(DatasetError) as err:
        cifar100(str(tmp_path))
    assert str(path) in str(err.value) and says in str(err.value)


def test_registered_builders():
    assert lookup(DATASETS, "cifar100") is cifar100
    assert lookup(DATASETS, "digits") is digits


def test_synthetic_images_are_learnable_but_not_trivial(tmp_path):
    folder = write_cifar100(tmp_path, n_train_per_class=40, n_test_per_class=20, num_classes=10)
    ds = cifar100(str(folder))
    flat = [s.images.flatten(1).float().numpy() / 255 for s in (ds.train, ds.test)]
    accuracy = NearestCentroid().fit(flat[0], ds.train.labels).score(flat[1], ds.test.labels)
    assert 0.3 < accuracy < 0.95  # chance is 0.1


# --- augmentation and the loader -------------------------------------------------------------


def test_crop_flip_is_a_window_of_the_zero_padded_image():
    images = indexed_split(32).images
    params = sample_crop_flip(32, generator=torch.Generator().manual_seed(0))
    params.offsets[:2] = torch.tensor([[0, 0], [8, 8]])  # both extremes of the window
    out = crop_flip(images, params.offsets, params.flip)
    padded = F.pad(images, (4, 4, 4, 4))
    for i in range(32):
        top, left = params.offsets[i].tolist()
        window = padded[i, :, top : top + 32, left : left + 32]
        assert torch.equal(out[i], window.flip(-1) if params.flip[i] else window)
    assert 0 < params.flip.sum() < 32


def test_sampled_parameters_cover_the_range():
    params = sample_crop_flip(4000, generator=torch.Generator().manual_seed(1))
    assert params.offsets.min() == 0 and params.offsets.max() == 8
    assert set(params.offsets.flatten().tolist()) == set(range(9))
    assert 0.45 < params.flip.float().mean() < 0.55


def test_normalize_matches_the_definition():
    images = indexed_split(8).images
    scale, shift = normalize_coefficients(MEAN, STD)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    expected = (images.float() / 255 - mean) / std
    torch.testing.assert_close(normalize(images, scale, shift), expected, atol=1e-5, rtol=0)


def test_train_epoch_visits_each_image_once_augmented():
    split = indexed_split(40)
    loader = BatchLoader(split, 16, mean=MEAN, std=STD, train=True, drop_last=False)
    x, y = collect(loader)
    assert len(loader) == 3 and sorted(y.tolist()) == list(range(40))
    assert not torch.equal(y, torch.arange(40))
    padded = F.pad(split.images, (4, 4, 4, 4))
    flips = 0
    for img, i in zip(unnormalize(x), y.tolist(), strict=True):
        windows = padded[i].unfold(1, 32, 1).unfold(2, 32, 1)  # [3, 9, 9, 32, 32]
        windows = windows.permute(1, 2, 0, 3, 4).reshape(81, 3, 32, 32)
        plain = (windows == img).flatten(1).all(1).any()
        mirrored = (windows.flip(-1) == img).flatten(1).all(1).any()
        assert plain or mirrored
        flips += int(mirrored and not plain)
    assert 0 < flips < 40


def test_train_drops_last_partial_batch_by_default():
    loader = BatchLoader(indexed_split(40), 16, mean=MEAN, std=STD, train=True)
    batches = list(loader)
    assert len(loader) == len(batches) == 2 and all(len(b.y) == 16 for b in batches)


def test_eval_loader_is_ordered_unaugmented_and_keeps_the_tail():
    split = indexed_split(40)
    loader = BatchLoader(split, 16, mean=MEAN, std=STD, train=False)
    assert [len(b.y) for b in loader] == [16, 16, 8] and len(loader) == 3
    x, y = collect(loader)
    assert torch.equal(y, torch.arange(40))
    scale, shift = normalize_coefficients(MEAN, STD)
    assert torch.equal(x, normalize(split.images, scale, shift))
    assert torch.equal(collect(loader)[0], x)


def test_same_seed_same_batches_and_epochs_differ():
    split = indexed_split(64)

    def make(seed: int) -> BatchLoader:
        return BatchLoader(split, 16, mean=MEAN, std=STD, train=True, seed=seed)

    a, b = make(3), make(3)
    xa, ya = collect(a)
    xb, yb = collect(b)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    x_next, y_next = collect(a)  # iterating again advances to epoch 1
    assert not torch.equal(ya, y_next)
    b.set_epoch(1)
    assert torch.equal(collect(b)[0], x_next)
    b.set_epoch(0)  # resuming at an epoch reproduces it exactly
    assert torch.equal(collect(b)[0], xa)
    assert not torch.equal(collect(make(4))[1], ya)


def test_ddp_shards_are_disjoint_equal_and_cover_the_epoch():
    split, world = indexed_split(103), 4

    def loader(rank: int, size: int, train: bool = True) -> BatchLoader:
        return BatchLoader(
            split,
            8,
            mean=MEAN,
            std=STD,
            train=train,
            seed=5,
            drop_last=False,
            rank=rank,
            world_size=size,
        )

    whole = collect(loader(0, 1))[1]
    shards = [collect(loader(r, world))[1] for r in range(world)]
    assert [len(s) for s in shards] == [25] * world
    assert len(set(torch.cat(shards).tolist())) == 100
    assert set(torch.cat(shards).tolist()) == set(whole[:100].tolist())
    assert len({len(loader(r, world)) for r in range(world)}) == 1
    tests = torch.cat([collect(loader(r, world, train=False))[1] for r in range(world)])
    assert sorted(tests.tolist()) == list(range(103))


@pytest.mark.parametrize("train", [True, False])
def test_chunking_does_not_change_the_batches(monkeypatch, train):
    def batches() -> list:
        loader = BatchLoader(indexed_split(100), 16, mean=MEAN, std=STD, train=train, seed=2)
        return list(loader)

    whole = batches()
    monkeypatch.setattr(BatchLoader, "chunk_images", 40)  # 2 batches per op, uneven tail
    chunked = batches()
    assert [len(b.y) for b in chunked] == [len(b.y) for b in whole]
    assert all(
        torch.equal(a.x, b.x) and torch.equal(a.y, b.y) for a, b in zip(whole, chunked, strict=True)
    )


def test_channels_last_changes_layout_not_values():
    split = indexed_split(20)
    kwargs = dict(mean=MEAN, std=STD, train=True, seed=1)
    plain = next(iter(BatchLoader(split, 8, **kwargs)))
    last = next(iter(BatchLoader(split, 8, channels_last=True, **kwargs)))
    assert last.x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(plain.x, last.x) and plain.x.dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 0},
        {"rank": 2, "world_size": 2},
        {"mean": (0.5,), "std": (0.2,)},
        {"std": (0.2, 0.0, 0.2)},
        {"seed": -1},
    ],
)
def test_loader_rejects_bad_settings(kwargs):
    settings = {"batch_size": 8, "mean": MEAN, "std": STD, "train": True, **kwargs}
    with pytest.raises(ConfigError):
        BatchLoader(indexed_split(4), **settings)


# --- subsets and digits ----------------------------------------------------------------------


def test_subset_is_class_balanced_and_deterministic():
    labels = torch.tensor([0] * 10 + [1] * 20 + [2] * 30 + [3] * 2)
    ids = torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2)
    split = ImageSplit(ids.contiguous(), labels)

    def picked(sub: ImageSplit) -> list[int]:
        return sub.images[:, 0, 0, 0].tolist()

    sub = split.subset(20, seed=0)
    assert Counter(sub.labels.tolist()) == {0: 6, 1: 6, 2: 6, 3: 2}  # class 3 runs out
    assert torch.equal(labels[picked(sub)], sub.labels) and picked(sub) == sorted(picked(sub))
    assert sorted(Counter(split.subset(7, seed=0).labels.tolist()).values()) == [1, 2, 2, 2]
    assert picked(split.subset(20, seed=0)) == picked(sub)
    assert len({tuple(picked(split.subset(20, seed=s))) for s in range(5)}) == 5
    assert split.subset(None, seed=0) is split and split.subset(62, seed=0) is split


def test_digits_suite():
    ds = digits()
    assert len(ds.train) + len(ds.test) == 1797 and len(ds.test) == 450
    assert ds.num_classes == 10 and ds.input_shape == (3, 32, 32)
    assert ds.train.images.dtype == torch.uint8 and ds.data_source == "real"
    assert Counter(ds.test.labels.tolist()).keys() == set(range(10))
    assert ds.train.images[:, :, :4].max() == 0  # zero border around the 24 px digit
    again = digits()
    assert again.fingerprint == ds.fingerprint and torch.equal(again.test.labels, ds.test.labels)
    pixels = ds.train.images.double() / 255
    assert ds.mean == pytest.approx(pixels.mean(dim=(0, 2, 3)).tolist())
    assert ds.std == pytest.approx(pixels.std(dim=(0, 2, 3)).tolist())
