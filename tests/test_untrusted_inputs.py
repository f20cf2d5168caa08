"""Data files are data: a pickle in a CIFAR-100 folder or the synthetic cache runs no code.

Each payload would, under plain ``pickle.loads``, create a marker directory and still give a
dict that loads as a normal run (the control test proves it); the restricted unpickler must
refuse it with a ``DatasetError`` naming the file and the global, before the marker exists.
"""

from __future__ import annotations

import os
import pickle
import pickletools
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.data import cifar100 as cifar_mod
from benchmarks.data import safe_pickle
from benchmarks.data.cifar100 import cifar100, load_folder
from benchmarks.data.fixtures import dump_py2_pickle, write_cifar100
from benchmarks.errors import DatasetError

FILES = ("train", "test", "meta")


class _SideEffect:
    """Unpickles as ``os.makedirs(marker)``, which returns None."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


class _AsDict:
    """Unpickles as ``dict(items)``: the whole file is a call, with the side effect inside."""

    def __init__(self, items: list):
        self.items = items

    def __reduce__(self):
        return (dict, (self.items,))


def small_folder(root: Path) -> Path:
    return write_cifar100(root, n_train_per_class=2, n_test_per_class=1, num_classes=5)


def plain(path: Path) -> dict:
    return pickle.loads(path.read_bytes(), encoding="bytes")


def plant(path: Path, marker: Path, style: str) -> str:
    """Rewrite ``path`` as a payload keeping its content; return the global refused first."""
    content = plain(path)
    if style == "value":  # a dict whose first value is the side effect
        payload = {b"\x00payload": _SideEffect(marker), **content}
    else:  # the file is dict(items) with the side effect among the items
        payload = _AsDict([(b"\x00payload", _SideEffect(marker)), *content.items()])
    dump_py2_pickle(payload, path)  # protocol 2, bytes as py2 strings, like the real files
    first = next(arg for op, arg, _ in pickletools.genops(path.read_bytes())
                 if op.name == "GLOBAL")
    return first.replace(" ", ".")


def assert_refused(err: pytest.ExceptionInfo, path: Path, refused: str, marker: Path) -> None:
    message = str(err.value)
    assert isinstance(err.value, DatasetError)
    assert (err.value.source, f"{err.value.module}.{err.value.name}") == (str(path), refused)
    again = pickle.loads(pickle.dumps(err.value))  # still travels back from a submitit job
    assert type(again) is type(err.value) and str(again) == message
    assert str(path) in message and refused in message
    assert "not a genuine CIFAR-100 file" in message and "malicious" in message
    assert "truncated or corrupt" not in message
    assert not marker.exists(), "the pickled code ran"


@pytest.mark.parametrize("style", ["value", "dict_call"])
@pytest.mark.parametrize("name", FILES)
def test_payload_would_run_and_load_under_plain_pickle(tmp_path, monkeypatch, name, style):
    """Control: without the restriction these payloads run and the folder still loads."""
    folder, marker = small_folder(tmp_path / "data"), tmp_path / "ran"
    plant(folder / name, marker, style)
    monkeypatch.setattr(
        safe_pickle, "loads", lambda raw, **kw: pickle.loads(raw, encoding=kw["encoding"])
    )
    ds = load_folder(folder)
    assert marker.is_dir() and ds.num_classes == 5 and len(ds.train) == 10


@pytest.mark.parametrize("style", ["value", "dict_call"])
@pytest.mark.parametrize("name", FILES)
def test_payload_in_a_dataset_file_is_refused_and_never_runs(tmp_path, name, style):
    root, marker = tmp_path / "data", tmp_path / "ran"
    folder = small_folder(root)
    refused = plant(folder / name, marker, style)
    assert refused == ("os.makedirs" if style == "value" else "__builtin__.dict")
    with pytest.raises(DatasetError) as err:
        load_folder(folder)
    assert_refused(err, folder / name, refused, marker)
    with pytest.raises(DatasetError) as err:  # the registered loader, from the root
        cifar100(root=str(root))
    assert_refused(err, folder / name, refused, marker)


def test_payload_in_the_synthetic_cache_is_refused_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar_mod, "SYNTHETIC_TRAIN_PER_CLASS", 2)
    monkeypatch.setattr(cifar_mod, "SYNTHETIC_TEST_PER_CLASS", 1)
    cache, empty, marker = tmp_path / "cache", tmp_path / "empty", tmp_path / "ran"
    empty.mkdir()
    folder = cifar_mod.synthetic_folder(cache)
    refused = plant(folder / "train", marker, "value")
    with pytest.raises(DatasetError) as err:
        cifar100(root=str(empty), synthetic_fallback=True, cache_dir=str(cache))
    assert_refused(err, folder / "train", refused, marker)
    assert "delete that folder" in str(err.value)


def _assert_same(a, b) -> None:
    """Equal values of equal types, arrays compared by dtype, shape and contents."""
    assert type(a) is type(b)
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert a == b


def test_genuine_files_load_exactly_as_with_plain_pickle(tmp_path):
    folder = small_folder(tmp_path)
    for name in FILES:
        raw = (folder / name).read_bytes()
        _assert_same(safe_pickle.loads(raw, source=folder / name),
                     pickle.loads(raw, encoding="bytes"))
    ds = load_folder(folder)
    for split, name in ((ds.train, "train"), (ds.test, "test")):
        content = plain(folder / name)
        assert torch.equal(split.images, torch.from_numpy(content[b"data"]).view(-1, 3, 32, 32))
        assert split.labels.tolist() == content[b"fine_labels"]
    assert ds.class_names == [n.decode() for n in plain(folder / "meta")[b"fine_label_names"]]
    assert ds.data_source == "synthetic"


def test_official_numpy1_spelling_and_python3_repickles_load(tmp_path):
    """The release names ``numpy.core.multiarray``; protocol 5 rebuilds arrays differently."""
    folder = small_folder(tmp_path)
    path = folder / "train"
    expected = plain(path)
    raw = path.read_bytes()
    assert b"cnumpy._core.multiarray\n_reconstruct\n" in raw
    numpy1 = raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    _assert_same(safe_pickle.loads(numpy1, source=path), expected)
    for protocol in range(3, pickle.HIGHEST_PROTOCOL + 1):  # 2 needs _codecs.encode: refused
        repickled = pickle.dumps({k.decode(): v for k, v in expected.items()}, protocol)
        loaded = safe_pickle.loads(repickled, source=path)
        _assert_same(loaded, {k.decode(): v for k, v in expected.items()})
    path.write_bytes(pickle.dumps({k.decode(): v for k, v in expected.items()}, 5))
    assert len(load_folder(folder).train) == 10


def test_allowed_globals_are_only_numpy_array_rebuilding():
    assert {f"{m}.{n}" for m, n in safe_pickle.ALLOWED_GLOBALS} == {
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray._reconstruct",
        "numpy.core.numeric._frombuffer",
        "numpy._core.numeric._frombuffer",
        "numpy.ndarray",
        "numpy.dtype",
    }


def test_markdown_reports_escape_html_from_record_fields(tmp_path):
    """leaderboard.md shows a record's HTML as text, as the HTML page does."""
    from test_results import make_record

    from benchmarks.report import markdown
    from benchmarks.results import leaderboard, load_records, write_record

    record = make_record("kd", 0, 70.0)
    record.method_label = '<img src=x onerror="alert(1)"> | after <b>X</b>'
    write_record(record, tmp_path)
    text = markdown(leaderboard(load_records(tmp_path)), "cifar100", "smoke")
    assert "<img" not in text and "<b>" not in text
    assert "&lt;img src=x onerror=\"alert(1)\"> \\| after &lt;b>X&lt;/b>" in text


@pytest.mark.parametrize("text", [",", "-1,", "0,-2", "-1"])
def test_seed_lists_without_seeds_or_with_negative_seeds_are_refused(text):
    from benchmarks.cli import parse_seeds
    from benchmarks.errors import ConfigError

    with pytest.raises(ConfigError, match="--seeds"):
        parse_seeds(text)


def test_methods_flag_naming_no_method_is_refused_not_everything(capsys):
    from benchmarks.cli import main

    assert main(["run", "--suite", "digits", "--methods", ","]) == 2
    assert "--methods names no method" in capsys.readouterr().err
