"""Detection is a suite like any other: ``kdbench run`` trains the teacher (cached), the student
alone and ctkd through the harness, measures them and writes records and the board; a new
detection method is one registered class. Also the detection data's own error messages."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from kdbench.benchmarks.board import leaderboard
from kdbench.benchmarks.cli import main as kdbench_main
from kdbench.benchmarks.config import load_suite
from kdbench.benchmarks.errors import ConfigError, DatasetError, UnknownNameError
from kdbench.benchmarks.method import Compressed, Method, RunContext
from kdbench.benchmarks.options import RunOptions
from kdbench.benchmarks.records import load_records
from kdbench.benchmarks.registry import METHODS, build_model
from kdbench.benchmarks.runner import Harness
from kdbench.detection.data import prepare_data
from kdbench.detection.models import Detector
from kdbench.detection.synthetic import SyntheticCocoSpec, write_synthetic_coco
from kdbench.detection.task import DetectionDataset

SUITES = Path(__file__).parents[1] / "benchmarks" / "suites"
# 8 train / 4 val images, 2 epochs for every model: minutes on 2 CPU cores
TINY = ('dataset = dict(type="synthetic_coco", num_train=8, num_val=4, image_size=128, '
        'classes=("red", "blue"), seed=0, cfg_options={"train_cfg.max_epochs": 2})\n')


@pytest.fixture
def tiny_suite(tmp_path) -> Path:
    text = (SUITES / "synthetic-coco.py").read_text()
    start = text.index("dataset = dict(")
    end = text.index(")\n", start) + 2
    path = tmp_path / "synthetic-coco.py"
    path.write_text(text[:start] + TINY + text[end:])
    return path


class OneEpochStudent(Method):
    """A second detection method, written as a plugin would be: the student detector trained
    alone for one epoch instead of its config's schedule (a cheaper, weaker row)."""

    @dataclass
    class Config:
        epochs: int = 1

    def run(self, ctx: RunContext) -> Compressed:
        from kdbench.detection.mmdet_runner import train

        student = ctx.build_student()
        options = {"train_cfg.max_epochs": self.cfg.epochs}
        cfg = ctx.data.config(student.config_path, work_dir=ctx.workdir / "mmdet",
                              seed=ctx.seed, options=options)
        return Compressed(model=Detector(train(cfg), student.config_path, options))


@pytest.fixture
def one_epoch_student():
    """The second detection method, registered for one test (as its plugin module would)."""
    METHODS.register_module("one_epoch_student", module=OneEpochStudent)
    yield
    METHODS.module_dict.pop("one_epoch_student")


@pytest.mark.slow
def test_kdbench_run_trains_measures_and_boards_detection_like_any_suite(
        tiny_suite, tmp_path, capsys, one_epoch_student):
    results, cache = tmp_path / "results", tmp_path / "cache"
    assert kdbench_main(["run", "--suite", str(tiny_suite), "--methods",
                         "teacher,scratch,ctkd,one_epoch_student", "--results-dir",
                         str(results), "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "ctkd" in out and "one_epoch_student" in out
    records = {r["method"]: r for r in load_records(results, "synthetic-coco", "smoke")}
    assert set(records) == {"teacher", "scratch", "ctkd", "one_epoch_student"}
    for record in records.values():
        assert record["metric_name"] == "mAP" and set(record["metrics"]) == {"mAP", "AP50",
                                                                             "AP75"}
        assert 0 <= record["metrics"]["mAP"] <= 100
        assert record["data_source"] == "synthetic" and record["dataset"] == "synthetic-coco"
        assert record["teacher"] == "centernet_r18w32" and record["student"] == "centernet_r18w16"
        assert record["teacher_metrics"].keys() == {"mAP", "AP50", "AP75"}
        assert record["latency"] and record["latency"][0]["setting"]["device"] == "cpu"
        assert record["model_report"]["exported"]
        assert record["recipe"]["train_cfg"]["max_epochs"] in (1, 2)  # the mmdet schedule run
    teacher, ctkd = records["teacher"], records["ctkd"]
    assert teacher["params_ratio"] == 1.0 and teacher["macs_ratio"] == 1.0
    assert teacher["teacher_checkpoint"]["source"] == "trained"
    assert records["scratch"]["params"] == ctkd["params"] < teacher["params"]
    assert records["one_epoch_student"]["params"] == ctkd["params"]
    assert ctkd["macs"] < teacher["macs"]
    assert ctkd["method_label"] == "after Gao et al. 2021"
    assert ctkd["config"] == {"config": "smoke/ctkd.py", "cfg_options": {}}
    assert ctkd["extras"]["distill"]["tau0"] == 2.0
    taus = ctkd["extras"]["tau_per_epoch"]
    assert len(taus) == 2 and taus[0] >= taus[1] and taus[-1] == 1.0
    assert records["one_epoch_student"]["recipe"]["train_cfg"]["max_epochs"] == 1
    board = leaderboard(load_records(results, "synthetic-coco", "smoke"))
    assert set(board["method"]) == {"teacher", "scratch", "ctkd", "one_epoch_student"}
    assert set(board["metric_name"]) == {"mAP"}
    # A second run reuses the cached teacher and skips the runs that have records.
    harness = Harness(load_suite(str(tiny_suite)), "smoke",
                      RunOptions(results_dir=results, cache_dir=cache))
    assert harness.run(["teacher", "ctkd"]) == []
    pair = harness.budget.pairs[0]
    _, info = harness.teacher(pair, 0)
    assert info.source == "cache" and info.sha256 == teacher["teacher_checkpoint"]["sha256"]


def test_the_detection_model_is_measured_in_tensor_mode():
    model = build_model("centernet_r18w16", num_classes=2).eval()
    assert isinstance(model, Detector) and model.config_path.name == "student.py"
    heatmap, wh, offset = model(torch.randn(2, 3, 128, 128))
    assert heatmap.shape == (2, 2, 32, 32) and wh.shape == offset.shape == (2, 2, 32, 32)


def test_ctkd_runs_on_detector_pairs_only():
    ctkd = METHODS.get("ctkd")(METHODS.get("ctkd").make_config("smoke"))
    from kdbench.benchmarks.config import Pair

    assert ctkd.supports(Pair("centernet_r18w32", "centernet_r18w16")) is None
    assert "not an mmdet detector" in ctkd.supports(Pair("resnet20", "resnet8"))


def test_a_classification_method_on_detection_data_is_a_clear_error(tiny_suite, tmp_path):
    harness = Harness(load_suite(str(tiny_suite)), "smoke",
                      RunOptions(results_dir=tmp_path / "r", cache_dir=tmp_path / "c"))
    assert isinstance(harness.data, DetectionDataset)
    with pytest.raises(ConfigError, match=r"image batches.*DetectionDataset"):
        from kdbench.benchmarks.method import make_loader

        make_loader(harness.data, harness.data.train, train=True, batch_size=2,
                    device=torch.device("cpu"), seed=0, channels_last=False)
    with pytest.raises(ConfigError, match="whole COCO splits"):
        harness.data.train.subset(2, seed=0)


def test_missing_coco_names_the_expected_layout(tmp_path):
    harness = Harness(load_suite("coco"), "full",
                      RunOptions(results_dir=tmp_path, cache_dir=tmp_path,
                                 dataset_overrides={"root": str(tmp_path / "coco")}))
    with pytest.raises(DatasetError) as info:
        _ = harness.data
    message = str(info.value)
    for path in ("annotations/instances_train2017.json", "annotations/instances_val2017.json",
                 "train2017/", "val2017/", "--data-root"):
        assert path in message


def test_coco_layout_is_found_from_the_suite_or_data_root(tmp_path):
    root = write_synthetic_coco(tmp_path / "mycoco", SyntheticCocoSpec(num_train=2, num_val=2))
    harness = Harness(load_suite("coco"), "full",
                      RunOptions(results_dir=tmp_path, cache_dir=tmp_path,
                                 dataset_overrides={"root": str(root)}))
    data = harness.data
    assert data.data_source == "real" and data.coco.root == root
    assert data.class_names == ["red", "blue"] and data.input_shape == (3, 512, 512)
    assert data.name == "coco2017" and len(data.fingerprint) == 64
    assert len(data.train) == 2 and len(data.test) == 2


def test_bad_dataset_input_is_named(tmp_path):
    with pytest.raises(ConfigError, match="dataset type must be one of coco, synthetic"):
        prepare_data({"type": "voc"}, tmp_path)
    with pytest.raises(ConfigError, match="num_images"):
        prepare_data({"type": "synthetic", "num_images": 3}, tmp_path)
    with pytest.raises(UnknownNameError, match="unknown budget 'short'; known budgets: smoke"):
        load_suite("synthetic-coco").budget("short")


def test_config_classes_must_match_the_data(tmp_path):
    from kdbench.detection.mmdet_runner import load_config
    from kdbench.detection.models import CONFIGS_DIR

    root = write_synthetic_coco(tmp_path / "three", SyntheticCocoSpec(
        num_train=2, num_val=2, classes=("red", "blue", "green")))
    data = prepare_data({"type": "synthetic", "classes": ("red", "blue", "green")}, tmp_path,
                        root=str(root))
    with pytest.raises(ConfigError, match="differ from the data's categories"):
        load_config(CONFIGS_DIR / "smoke" / "student.py", data, work_dir=tmp_path, seed=0)


def test_synthetic_set_is_deterministic_coco_and_never_overlaps(tmp_path):
    spec = SyntheticCocoSpec(num_train=20, num_val=5, seed=3)
    a, b = write_synthetic_coco(tmp_path / "a", spec), write_synthetic_coco(tmp_path / "b", spec)
    for name in ("annotations/instances_train2017.json", "train2017/000007.png"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    ann = json.loads((a / "annotations/instances_train2017.json").read_text())
    assert [c["name"] for c in ann["categories"]] == ["red", "blue"]
    assert len({x["id"] for x in ann["annotations"]}) == len(ann["annotations"])
    by_image: dict[int, list] = {}
    for x in ann["annotations"]:
        w, h = x["bbox"][2:]
        assert 12 <= w <= 60 and 12 <= h <= 60 and x["area"] == w * h and x["iscrowd"] == 0
        by_image.setdefault(x["image_id"], []).append(x["bbox"])
    assert set(by_image) == set(range(1, 21))
    for boxes in by_image.values():
        for i, (x1, y1, w1, h1) in enumerate(boxes):
            for x2, y2, w2, h2 in boxes[i + 1:]:
                assert x1 + w1 <= x2 or x2 + w2 <= x1 or y1 + h1 <= y2 or y2 + h2 <= y1
    with pytest.raises(ConfigError, match="subset of red, blue, green, yellow"):
        SyntheticCocoSpec(classes=("purple",))


def test_a_model_key_the_detector_lacks_is_a_config_error_naming_the_config(tiny_suite,
                                                                           tmp_path):
    # distill is a CenterNetKD key; given to every model it reaches the teacher's CenterNet
    text = tiny_suite.read_text().replace('cfg_options={"train_cfg.max_epochs": 2}',
                                          'cfg_options={"model.distill.tau0": 1.0}')
    tiny_suite.write_text(text)
    harness = Harness(load_suite(str(tiny_suite)), "smoke",
                      RunOptions(results_dir=tmp_path / "results", cache_dir=tmp_path / "cache"))
    with pytest.raises(ConfigError, match=r"smoke/teacher\.py: .*unexpected keyword argument "
                                          r"'distill'.*ctkd"):
        harness.run(["teacher"])
    assert not list((tmp_path / "cache" / "teachers").glob("*.pt"))  # nothing trained
