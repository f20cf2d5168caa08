"""Data files are data: a pickle in a CIFAR-100 folder or the synthetic cache runs no code.

Each payload would, under plain ``pickle.loads``, create a marker directory and still give a
dict that loads as a normal run (the control test proves it); the restricted unpickler must
refuse it with a ``DatasetError`` naming the file and the global, before the marker exists.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from kdbench.benchmarks.data import cifar100 as cifar_mod
from kdbench.benchmarks.data import safe_pickle
from kdbench.benchmarks.data.cifar100 import cifar100, load_folder
from kdbench.benchmarks.data.fixtures import dump_py2_pickle, write_cifar100
from kdbench.benchmarks.errors import DatasetError

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

    from kdbench.benchmarks.board import leaderboard
    from kdbench.benchmarks.records import load_records, write_record
    from kdbench.benchmarks.report import markdown

    record = make_record("kd", 0, 70.0)
    record.method_label = '<img src=x onerror="alert(1)"> | after <b>X</b>'
    write_record(record, tmp_path)
    text = markdown(leaderboard(load_records(tmp_path)), "cifar100", "smoke")
    assert "<img" not in text and "<b>" not in text
    assert "&lt;img src=x onerror=\"alert(1)\"> \\| after &lt;b>X&lt;/b>" in text


@pytest.mark.parametrize("text", [",", "-1,", "0,-2", "-1"])
def test_seed_lists_without_seeds_or_with_negative_seeds_are_refused(text):
    from kdbench.benchmarks.cli import parse_seeds
    from kdbench.benchmarks.errors import ConfigError

    with pytest.raises(ConfigError, match="--seeds"):
        parse_seeds(text)


def test_methods_flag_naming_no_method_is_refused_not_everything(capsys):
    from kdbench.benchmarks.cli import main

    assert main(["run", "--suite", "digits", "--methods", ","]) == 2
    assert "--methods names no method" in capsys.readouterr().err


# ---- suite files, flags and caches: each a message naming what is wrong, never a traceback --
@pytest.mark.parametrize("content, says", [
    ("metric = 'top1'\ndataset = dict(type='digits')\n", "bad.py lacks required key 'name'"),
    ("name = 'x'\n", "bad.py lacks required key 'dataset'"),
    ("name = 'x'\ndataset = dict(type='digits'\n",
     "bad.py is not valid Python: '(' was never closed (line 2)"),
    ("name = 'x'\ndataset = dict(type='digits')\nbudgets = dict(smoke=dict(pairs=[('resnet8', "
     "'resnet8')], train=dict(epochs=-3)))\n",
     "bad.py.budgets.smoke.train: epochs must be a positive integer, got -3"),
])
def test_a_broken_suite_file_is_named_with_what_is_wrong(tmp_path, capsys, content, says):
    from kdbench.benchmarks.cli import main

    suite = tmp_path / "bad.py"
    suite.write_text(content)
    assert main(["run", "--suite", str(suite), "--methods", "kd", "--results-dir",
                 str(tmp_path / "r"), "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert _unwrapped(says) in _unwrapped(err), err
    assert not (tmp_path / "r").exists()


def _unwrapped(text: str) -> str:
    """``text`` without whitespace: rich wraps a long message anywhere, even in a word."""
    return "".join(text.split())


def _cli_err(capsys, *args) -> tuple[int, str]:
    from kdbench.benchmarks.cli import main

    code = main(list(args))
    return code, _unwrapped(capsys.readouterr().err)


def test_data_root_on_a_suite_without_a_folder_blames_the_flag(tmp_path, capsys):
    code, err = _cli_err(capsys, "run", "--suite", "digits", "--methods", "kd", "--data-root",
                         str(tmp_path), "--results-dir", str(tmp_path / "r"))
    assert code == 2 and _unwrapped("--data-root does not apply to suite 'digits'") in err


def test_leaderboard_of_an_unknown_suite_says_unknown_suite(tmp_path, capsys):
    code, err = _cli_err(capsys, "leaderboard", "--suite", "nosuch", "--results-dir",
                         str(tmp_path))
    assert code == 2 and _unwrapped("unknown suite 'nosuch'") in err and "digits" in err


def test_teacher_checkpoint_for_an_architecture_the_suite_does_not_use_is_refused(
        tmp_path, capsys):
    ckpt = tmp_path / "vgg8.pt"
    ckpt.write_bytes(b"")
    code, err = _cli_err(capsys, "run", "--suite", "digits", "--methods", "kd",
                         "--teacher-ckpt", f"vgg8={ckpt}", "--results-dir", str(tmp_path / "r"))
    assert code == 2 and _unwrapped("--teacher-ckpt names vgg8") in err
    assert _unwrapped("its teachers: resnet14") in err


def test_a_corrupt_cached_teacher_is_named_as_a_cache_entry(tmp_path):
    from kdbench.benchmarks.errors import ConfigError
    from kdbench.benchmarks.registry import build_model
    from kdbench.benchmarks.teachers import TeacherCache

    cache = TeacherCache(tmp_path)
    key = "f" * 64
    path = cache.dir / f"resnet8-{key[:16]}.pt"
    path.parent.mkdir(parents=True)
    torch.save(build_model("resnet8", 10).state_dict(), path)
    path.write_bytes(path.read_bytes()[:500])  # truncated, e.g. by a full disk
    with pytest.raises(ConfigError, match=r"cached teacher .* is unreadable .*delete it") as err:
        cache.get("resnet8", key, lambda: build_model("resnet8", 10), lambda m: None,
                  lambda m: {"top1": 0.0, "top5": 0.0})
    assert str(path) in str(err.value)


@pytest.fixture()
def one_seed_results(tmp_path):
    from test_results import make_record

    from kdbench.benchmarks.records import write_record

    out = tmp_path / "results"
    for method, acc in (("kd", 71.0), ("scratch", 69.0)):
        record = make_record(method, 0, acc)
        record.test_images = 1000
        record.environment = {"aten_cpu_capability": "AVX2"}
        write_record(record, out)
    return out


def _three_seed_baseline(tmp_path, results):
    from test_results import make_record

    from kdbench.benchmarks.cli import main
    from kdbench.benchmarks.records import write_record

    three = tmp_path / "three"
    for method, accs in (("kd", (71.0, 60.0, 80.0)), ("scratch", (69.0, 69.5, 68.5))):
        for seed, acc in enumerate(accs):
            record = make_record(method, seed, acc)
            record.test_images = 1000
            record.environment = {"aten_cpu_capability": "AVX2"}
            write_record(record, three)
    baselines = tmp_path / "baselines"
    assert main(["regress", "--suites", "cifar100", "--reuse", "--update", "--results-dir",
                 str(three), "--baselines", str(baselines)]) == 0
    return baselines


def test_regress_update_from_fewer_seeds_is_refused_unless_asked(tmp_path, capsys,
                                                                 one_seed_results):
    from kdbench.benchmarks.cli import main

    baselines = _three_seed_baseline(tmp_path, one_seed_results)
    before = (baselines / "cifar100_smoke.csv").read_bytes()
    capsys.readouterr()
    args = ["regress", "--suites", "cifar100", "--reuse", "--update", "--results-dir",
            str(one_seed_results), "--baselines", str(baselines)]
    assert main(args) == 2
    err = _unwrapped(capsys.readouterr().err)
    assert _unwrapped("fewer seeds than it has: kd (3 -> 1 seeds)") in err
    assert "--allow-fewer-seeds" in err
    assert (baselines / "cifar100_smoke.csv").read_bytes() == before
    # Asked for: done, and the shrinking tolerance is in the diff.
    assert main([*args, "--allow-fewer-seeds"]) == 0
    out = capsys.readouterr().out
    assert "Accuracy tolerances changed by the update" in out
    assert re.search(r"\| kd \| ±\d+\.\d\d pp \| ±0\.10 pp \|", out), out


def test_regress_update_onto_read_only_baselines_is_a_clear_error(tmp_path, capsys,
                                                                  monkeypatch, one_seed_results):
    import errno

    import pandas as pd

    baselines = tmp_path / "baselines"

    def read_only(self, path, *args, **kwargs):  # as a read-only folder answers, even to root
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(pd.DataFrame, "to_csv", read_only)
    code, err = _cli_err(capsys, "regress", "--suites", "cifar100", "--reuse", "--update",
                         "--results-dir", str(one_seed_results), "--baselines", str(baselines))
    assert code == 2
    assert _unwrapped("cannot write the baseline") in err and _unwrapped("Permission denied") in err
    assert not list(baselines.glob("*"))  # nothing half-written


def test_report_into_an_unwritable_folder_is_a_clear_error(tmp_path, capsys, monkeypatch,
                                                           one_seed_results):
    import errno
    from pathlib import Path as _Path

    out = tmp_path / "report"
    real_write = _Path.write_text

    def read_only(self, *args, **kwargs):
        if out in self.parents:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(_Path, "write_text", read_only)
    code, err = _cli_err(capsys, "report", "--suite", "cifar100", "--results-dir",
                         str(one_seed_results), "--out", str(out))
    assert code == 2
    assert _unwrapped(f"cannot write the report into {out}: Permission denied") in err
    assert "--out" in err
