"""Market-1501 / DukeMTMC-reID: the fixture writer's on-disk layout and the real loader on it."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from kdbench.benchmarks.data import ImageSplit
from kdbench.benchmarks.errors import ConfigError, DatasetError
from kdbench.reid.datasets import dukemtmc_reid, market1501
from kdbench.reid.fixtures import write_dukemtmc_reid, write_market1501
from kdbench.reid.layout import DUKEMTMC_REID, MARKET1501

SIZES = dict(train_ids=8, test_ids=5, cameras_per_id=3, images_per_camera=2, queries_per_id=2,
             distractors=3)
MARKET_NAME = re.compile(r"^(-1|\d{4})_c[1-6]s[1-6]_\d{6}_\d{2}\.jpg$")


@pytest.fixture(scope="module")
def market_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reid")
    write_market1501(root, **SIZES)
    return root


@pytest.fixture(scope="module")
def market(market_root):
    return market1501(str(market_root), height=64, width=32)


def test_writer_uses_the_release_layout(market_root):
    folder = market_root / "market1501" / "Market-1501-v15.09.15"
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == [
        "bounding_box_test", "bounding_box_train", "query"]
    names = [p.name for p in folder.rglob("*.jpg")]
    assert names and all(MARKET_NAME.match(n) for n in names), names[:5]
    assert (folder / "bounding_box_test" / "-1_c1s1_000000_01.jpg").is_file()  # one junk box
    assert len(list((folder / "bounding_box_test").glob("0000_*.jpg"))) == 3  # distractors
    with Image.open(next(folder.rglob("*.jpg"))) as image:  # real JPEGs at the release size
        assert (image.format, image.size) == ("JPEG", (64, 128))
    counts = {d: len(list((folder / d).glob("*.jpg"))) for d in
              ("bounding_box_train", "query", "bounding_box_test")}
    assert counts == {"bounding_box_train": 8 * 3 * 2, "query": 5 * 2,
                      "bounding_box_test": 5 * (3 * 2 - 2) + 3 + 1}


def test_loader_splits_relabels_and_drops_junk(market):
    assert (market.name, market.data_source, market.input_shape) == ("market1501", "synthetic",
                                                                     (3, 64, 32))
    assert market.train.images.dtype == torch.uint8
    # 8 training ids relabelled 0..7 in the order of their raw ids
    assert market.num_classes == 8 and sorted(set(market.train.labels.tolist())) == list(range(8))
    raw = market.train.meta["pid"]
    assert torch.equal(torch.unique(raw)[market.train.labels], raw)
    assert market.class_names == [f"{int(p):04d}" for p in torch.unique(raw)]
    gallery = market.extra_splits["gallery"]
    assert (len(market.train), len(market.test), len(gallery)) == (48, 10, 23)  # junk dropped
    assert -1 not in gallery.labels.tolist() and (gallery.labels == 0).sum() == 3  # distractors
    for split in (market.train, market.test, gallery):
        cams = split.meta["camid"]
        assert cams.min() >= 0 and cams.max() <= 5  # 0-based
    assert not set(market.test.labels.tolist()) & set(raw.tolist())  # disjoint identities


def test_every_query_has_a_cross_camera_match_and_a_same_camera_decoy(market):
    gallery = market.extra_splits["gallery"]
    for pid, cam in zip(market.test.labels.tolist(), market.test.meta["camid"].tolist(),
                        strict=True):
        same_id = gallery.labels == pid
        assert (same_id & (gallery.meta["camid"] != cam)).any()
        assert (same_id & (gallery.meta["camid"] == cam)).any()


def test_meta_travels_with_subsets(market):
    sub = market.train.subset(16, seed=0)
    ids = torch.unique(market.train.meta["pid"])
    assert len(sub) == 16 and torch.equal(ids[sub.labels], sub.meta["pid"])  # still aligned
    index = torch.tensor([5, 0, 7])
    taken = market.train.take(index)
    assert torch.equal(taken.images, market.train.images[index])
    assert torch.equal(taken.meta["camid"], market.train.meta["camid"][index])
    with pytest.raises(DatasetError, match=r"meta\['camid'\] must be a tensor with one entry"):
        ImageSplit(sub.images, sub.labels, {"camid": sub.labels[:3]})


@pytest.mark.parametrize(("name", "expected"), [
    ("0002_c1s1_000451_03.jpg", (2, 0)),
    ("-1_c3s2_000000_00.jpg", (-1, 2)),
    ("0000_c6s4_002347_01.jpg", (0, 5)),
])
def test_market_file_names(name, expected):
    assert MARKET1501.parse(name) == expected


def test_duke_names_use_the_same_parser(tmp_path):
    assert DUKEMTMC_REID.parse("0001_c2_f0046182.jpg") == (1, 1)
    assert DUKEMTMC_REID.parse("0005_c8_f0000001.jpg") == (5, 7)
    folder = write_dukemtmc_reid(tmp_path, train_ids=3, test_ids=2, cameras_per_id=2,
                                 queries_per_id=1, distractors=1)
    assert folder == tmp_path / "dukemtmc-reid" / "DukeMTMC-reID"
    assert re.match(r"^\d{4}_c[1-8]_f\d{7}\.jpg$", next(folder.rglob("0*.jpg")).name)
    data = dukemtmc_reid(str(tmp_path), height=32, width=16)
    assert (data.name, data.num_classes, len(data.test)) == ("dukemtmc_reid", 3, 2)


@pytest.mark.parametrize(("name", "match"), [
    ("Thumbs_x.jpg", r"expected names like 0002_c1s1_000451_03\.jpg"),
    ("0002_c7s1_000451_03.jpg", "cameras 1-6"),
    ("-2_c1s1_000000_00.jpg", "ids are >= 0"),
])
def test_bad_file_names_are_named(name, match):
    with pytest.raises(DatasetError, match=match):
        MARKET1501.parse(name)


def test_missing_dataset_says_where_it_looked_and_what_it_expects(tmp_path):
    with pytest.raises(DatasetError) as info:
        market1501(str(tmp_path / "nowhere"))
    message = str(info.value)
    assert "Market-1501 not found" in message
    assert str(tmp_path / "nowhere" / "market1501" / "Market-1501-v15.09.15") in message
    assert "bounding_box_train" in message and "Expected layout" in message
    assert "0002_c1s1_000451_03.jpg" in message and "synthetic_fallback=True" in message


def test_release_folder_without_version_folder_loads(market_root, tmp_path):
    shutil.copytree(market_root / "market1501" / "Market-1501-v15.09.15",
                    tmp_path / "market1501")
    assert len(market1501(str(tmp_path), height=32, width=16).train) == 48


def test_unreadable_image_is_a_dataset_error(market_root, tmp_path):
    folder = tmp_path / "market1501" / "Market-1501-v15.09.15"
    shutil.copytree(market_root / "market1501" / "Market-1501-v15.09.15", folder)
    (folder / "query" / "0001_c1s1_000001_01.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=r"0001_c1s1_000001_01\.jpg is not a readable image"):
        market1501(str(tmp_path), height=32, width=16)


def test_synthetic_fallback_is_written_once_and_labelled(tmp_path, monkeypatch):
    from kdbench.reid import datasets

    monkeypatch.setattr(datasets, "SYNTHETIC", {**SIZES, "seed": 0})
    data = market1501(str(tmp_path / "none"), height=32, width=16, synthetic_fallback=True,
                      cache_dir=str(tmp_path / "cache"))
    assert data.data_source == "synthetic" and "SYNTHETIC stand-in" in data.notice
    assert "looked for bounding_box_train/" in data.notice
    stamp = {p: p.stat().st_mtime_ns for p in Path(data.root).rglob("*.jpg")}
    again = market1501(str(tmp_path / "none"), height=32, width=16, synthetic_fallback=True,
                       cache_dir=str(tmp_path / "cache"))
    assert again.fingerprint == data.fingerprint
    assert stamp == {p: p.stat().st_mtime_ns for p in Path(again.root).rglob("*.jpg")}


def test_fingerprint_depends_on_size_and_bytes(market_root, market):
    assert market1501(str(market_root), height=32, width=16).fingerprint != market.fingerprint
    assert market1501(str(market_root), height=64, width=32).fingerprint == market.fingerprint


def test_bad_sizes_are_config_errors(market_root, tmp_path):
    with pytest.raises(ConfigError, match="height and width must be"):
        market1501(str(market_root), height=4, width=2)
    with pytest.raises(ConfigError, match="queries_per_id < cameras_per_id"):
        write_market1501(tmp_path, cameras_per_id=2, queries_per_id=2)
