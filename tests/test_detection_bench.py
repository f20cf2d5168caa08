"""The detection benchmark end to end on the synthetic set, its data and suite handling, and
the synthetic COCO writer."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from detection_support import build, smoke_config, synthetic_data

from benchmarks.cli import main as kdbench_main
from benchmarks.errors import ConfigError, DatasetError, UnknownNameError
from benchmarks.results import leaderboard, load_records
from detection.bench import DetectionBenchmark, TensorModeDetector, scope_options
from detection.data import prepare_data
from detection.suite import load_detection_suite
from detection.synthetic import SyntheticCocoSpec, write_synthetic_coco

TINY = {"type": "synthetic", "num_train": 8, "num_val": 4, "image_size": 128,
        "classes": ("red", "blue"), "seed": 0}


@pytest.fixture
def tiny_suite():
    suite = load_detection_suite("synthetic-coco")
    return dataclasses.replace(suite, dataset=TINY)


def test_bench_writes_records_for_teacher_scratch_ctkd_and_the_leaderboard(tiny_suite, tmp_path,
                                                                          capsys):
    results, cache = tmp_path / "results", tmp_path / "cache"
    bench = DetectionBenchmark(tiny_suite, "smoke", results_dir=results, cache_dir=cache,
                               cfg_options={"train_cfg.max_epochs": 2})
    paths = bench.run()
    assert len(paths) == 3
    records = {r["method"]: r for r in load_records(results, "synthetic-coco", "smoke")}
    assert set(records) == {"teacher", "scratch", "ctkd"}
    for record in records.values():
        assert record["metric_name"] == "mAP" and set(record["metrics"]) == {"mAP", "AP50",
                                                                             "AP75"}
        assert 0 <= record["metrics"]["mAP"] <= 100
        assert record["data_source"] == "synthetic" and record["dataset"] == "synthetic-coco"
        assert record["teacher"] == "centernet_r18w32" and record["student"] == "centernet_r18w16"
        assert record["teacher_checkpoint"]["source"] == "trained"
        assert record["latency"] and record["latency"][0]["setting"]["device"] == "cpu"
        assert record["model_report"]["exported"]
    teacher, ctkd = records["teacher"], records["ctkd"]
    assert teacher["params_ratio"] == 1.0 and teacher["macs_ratio"] == 1.0
    assert records["scratch"]["params"] == ctkd["params"] < teacher["params"]
    assert ctkd["macs"] < teacher["macs"]
    assert ctkd["method_label"] == "after Gao et al. 2021"
    assert ctkd["config"]["tau0"] == 2.0 and ctkd["config"]["heatmap"] == "focal"
    taus = ctkd["extras"]["tau_per_epoch"]
    assert len(taus) == 2 and taus[0] >= taus[1] and taus[-1] == 1.0
    board = leaderboard(load_records(results, "synthetic-coco", "smoke"))
    assert set(board["method"]) == {"teacher", "scratch", "ctkd"}
    assert set(board["metric_name"]) == {"mAP"}
    assert kdbench_main(["leaderboard", "--suite", "synthetic-coco", "--budget", "smoke",
                         "--results-dir", str(results)]) == 0
    assert "ctkd" in capsys.readouterr().out
    # A second benchmark reuses the cached teacher and skips runs that have records.
    again = DetectionBenchmark(tiny_suite, "smoke", results_dir=results, cache_dir=cache,
                               cfg_options={"train_cfg.max_epochs": 2})
    assert again.run() == []
    assert again.teacher(0).source == "cache"
    assert again.teacher(0).sha256 == teacher["teacher_checkpoint"]["sha256"]


def test_tensor_mode_wrapper_returns_the_three_head_maps(synthetic_coco, tmp_path):
    cfg = smoke_config("student", synthetic_data(synthetic_coco, tmp_path), tmp_path)
    wrapped = TensorModeDetector(build(cfg.model)).eval()
    heatmap, wh, offset = wrapped(torch.randn(2, 3, 128, 128))
    assert heatmap.shape == (2, 2, 32, 32) and wh.shape == offset.shape == (2, 2, 32, 32)


def test_missing_coco_names_the_expected_layout(tmp_path):
    with pytest.raises(DatasetError) as info:
        prepare_data({"type": "coco", "root": str(tmp_path / "coco")}, tmp_path)
    message = str(info.value)
    for path in ("annotations/instances_train2017.json", "annotations/instances_val2017.json",
                 "train2017/", "val2017/", "--data-root"):
        assert path in message


def test_coco_layout_is_found_from_the_suite_or_data_root(tmp_path):
    root = write_synthetic_coco(tmp_path / "mycoco", SyntheticCocoSpec(num_train=2, num_val=2))
    suite = load_detection_suite("coco")
    data = prepare_data(suite.dataset, tmp_path, root=str(root))
    assert data.data_source == "real" and data.root == root and data.classes == ("red", "blue")
    assert data.name == "coco2017" and len(data.fingerprint) == 64


def test_bad_dataset_and_suite_input_is_named(tmp_path):
    with pytest.raises(ConfigError, match="dataset type must be one of coco, synthetic"):
        prepare_data({"type": "voc"}, tmp_path)
    with pytest.raises(ConfigError, match="num_images"):
        prepare_data({"type": "synthetic", "num_images": 3}, tmp_path)
    with pytest.raises(UnknownNameError, match="known detection suites: coco, synthetic-coco"):
        load_detection_suite("voc")
    with pytest.raises(UnknownNameError, match="unknown budget 'full'"):
        load_detection_suite("synthetic-coco").budget("full")
    bench = DetectionBenchmark(load_detection_suite("synthetic-coco"), "smoke",
                               results_dir=tmp_path, cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="unknown detection method"):
        bench.run(["kd"])


def test_config_classes_must_match_the_data(synthetic_coco, tmp_path):
    root = write_synthetic_coco(tmp_path / "three", SyntheticCocoSpec(
        num_train=2, num_val=2, classes=("red", "blue", "green")))
    data = prepare_data({"type": "synthetic", "classes": ("red", "blue", "green")}, tmp_path,
                        root=str(root))
    with pytest.raises(ConfigError, match="differ from the data's categories"):
        smoke_config("student", data, tmp_path)


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


def test_command_line_reports_bad_input_as_one_line(capsys):
    from detection.bench import main

    assert main(["--suite", "voc"]) == 2
    assert main(["--cfg-options", "novalue"]) == 2
    err = capsys.readouterr().err
    assert "unknown detection suite 'voc'" in err
    assert "--cfg-options takes KEY=VALUE" in err


def test_cfg_options_scoped_to_one_row():
    options = {"train_cfg.max_epochs": 2, "ctkd:model.distill.tau0": 1.0,
               "scratch:optim_wrapper.optimizer.lr": 0.01}
    assert scope_options(options, "teacher") == {"train_cfg.max_epochs": 2}
    assert scope_options(options, "ctkd") == {"train_cfg.max_epochs": 2,
                                              "model.distill.tau0": 1.0}
    assert scope_options(options, "scratch") == {"train_cfg.max_epochs": 2,
                                                 "optim_wrapper.optimizer.lr": 0.01}
    with pytest.raises(ConfigError, match=r"'techer' is not a row.*teacher, scratch, ctkd"):
        scope_options({"techer:model.x": 1}, "teacher")


def test_a_model_key_the_detector_lacks_is_a_config_error_naming_the_config(tiny_suite,
                                                                           tmp_path):
    # distill is a CenterNetKD key; given unscoped it reaches the teacher's plain CenterNet
    bench = DetectionBenchmark(tiny_suite, "smoke", results_dir=tmp_path / "results",
                               cache_dir=tmp_path / "cache",
                               cfg_options={"model.distill.tau0": 1.0})
    with pytest.raises(ConfigError, match=r"smoke/teacher\.py: .*unexpected keyword argument "
                                          r"'distill'.*ctkd:model\.distill"):
        bench.run(["teacher"])
    assert not list((tmp_path / "cache" / "teachers").glob("*.pt"))  # nothing trained
