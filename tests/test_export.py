"""A run keeps what it measured (model.pt2 + model.safetensors, sha256 in the record), and
``kdbench export`` gives it back: reloaded and evaluated, it reproduces the record's top-1."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from test_record_configuration import TINY_SUITE

from kdbench.benchmarks.cli import main
from kdbench.benchmarks.config import load_suite
from kdbench.benchmarks.method import make_loader
from kdbench.benchmarks.options import RunOptions
from kdbench.benchmarks.records import load_records
from kdbench.benchmarks.runner import Harness
from kdbench.benchmarks.train import evaluate


class _AsModule(torch.nn.Module):
    """An exported program (its graph is fixed in eval mode) behind the nn.Module calls
    ``evaluate`` makes; it is kept out of the module tree, which it cannot join."""

    def __init__(self, program):
        super().__init__()
        self._program = [program]

    def forward(self, x):
        return self._program[0](x)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    suite = tmp / "tiny-digits.py"
    suite.write_text(TINY_SUITE)
    assert main(["run", "--suite", str(suite), "--methods", "kd", "--results-dir",
                 str(tmp / "results"), "--cache-dir", str(tmp / "cache"), "--no-latency",
                 "--quiet"]) == 0
    [record] = load_records(tmp / "results")
    return tmp, suite, record


def export_cli(tmp, *args):
    return main(["export", "kd", "--suite", "tiny-digits", "--results-dir",
                 str(tmp / "results"), *args])


def test_a_run_records_its_artifacts_with_their_sha256(run):
    tmp, _, record = run
    for fmt, name in (("pt2", "model.pt2"), ("safetensors", "model.safetensors")):
        entry = record["artifacts"][fmt]
        path = tmp / "results" / entry["path"]
        assert path.name == name and path.stat().st_size == entry["bytes"]
        assert len(entry["sha256"]) == 64


def test_the_exported_program_reproduces_the_records_top1_exactly(run):
    tmp, suite, record = run
    assert export_cli(tmp, "--format", "pt2", "--out", str(tmp / "pt2")) == 0
    program = torch.export.load(tmp / "pt2" / "model.pt2").module()
    model = _AsModule(program)
    harness = Harness(load_suite(str(suite)), "smoke", RunOptions(
        results_dir=tmp / "results", cache_dir=tmp / "cache", measure_latency=False,
        progress=False))
    _, test_split = harness.splits()
    loader = make_loader(harness.data, test_split, train=False, batch_size=500,
                         device=torch.device("cpu"), seed=0, channels_last=False)
    assert evaluate(model, loader, torch.device("cpu"))["top1"] == record["metrics"]["top1"]


def test_safetensors_and_onnx_exports_and_the_model_card(run):
    tmp, _, record = run
    assert export_cli(tmp, "--format", "safetensors", "--out", str(tmp / "st")) == 0
    from safetensors.torch import load_file

    weights = load_file(tmp / "st" / "model.safetensors")
    assert sum(t.numel() for t in weights.values()) >= record["params"]
    card = (tmp / "st" / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    [model] = front["model-index"]
    metric = model["results"][0]["metrics"][0]
    # The card states metrics to 4 decimals (model-index values are for display).
    assert metric["value"] == pytest.approx(record["metrics"]["top1"], abs=5e-5)
    assert "mean of 1 seeds, last epoch" in metric["name"]
    assert export_cli(tmp, "--format", "onnx", "--out", str(tmp / "onnx")) == 0
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp / "onnx" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    program = torch.export.load(tmp / "pt2" / "model.pt2") if (tmp / "pt2").exists() else None
    x = torch.randn(1, 3, 32, 32)
    ours = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    if program is not None:
        torch.testing.assert_close(torch.from_numpy(ours), program.module()(x),
                                   rtol=1e-4, atol=1e-4)


def test_bad_exports_are_clear_errors_and_overwrite_nothing(run, capsys):
    tmp, _, record = run
    out = tmp / "again"
    assert export_cli(tmp, "--format", "pt2", "--out", str(out)) == 0
    before = (out / "model.pt2").read_bytes()
    capsys.readouterr()
    assert export_cli(tmp, "--format", "pt2", "--out", str(out)) == 2
    assert "exists; export into an empty folder" in " ".join(capsys.readouterr().err.split())
    assert (out / "model.pt2").read_bytes() == before
    assert main(["export", "lma", "--suite", "tiny-digits", "--results-dir",
                 str(tmp / "results"), "--out", str(tmp / "x")]) == 2
    assert "no successful run of 'lma'" in " ".join(capsys.readouterr().err.split())
    # An artifact changed after its run is refused, naming the file.
    program = tmp / "results" / record["artifacts"]["pt2"]["path"]
    original = program.read_bytes()
    program.write_bytes(original + b"tampered")
    try:
        assert export_cli(tmp, "--format", "pt2", "--out", str(tmp / "t")) == 2
        err = "".join(capsys.readouterr().err.split())
        assert "nolongermatchesitsrecord" in err and "refusingtoexportit" in err
        assert not (tmp / "t" / "model.pt2").exists()
    finally:
        program.write_bytes(original)
    json.dumps(record)  # the record stays plain JSON


def test_tensorboard_curves_of_a_run_and_the_report_links_them(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    suite = tmp_path / "tiny-digits.py"
    suite.write_text(TINY_SUITE)
    results = tmp_path / "results"
    assert main(["run", "--suite", str(suite), "--methods", "kd", "--results-dir", str(results),
                 "--cache-dir", str(tmp_path / "cache"), "--no-latency", "--quiet",
                 "--tensorboard"]) == 0
    [events] = list((results / "artifacts").rglob("events.out.tfevents.*"))
    assert events.parent.name == "tensorboard"
    accumulator = EventAccumulator(str(events.parent))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    [record] = load_records(results)
    assert {"final/top1", "final/params_ratio"} <= tags
    loss_tags = {t for t in tags if t.endswith("/loss")}
    assert loss_tags and any(t.endswith("/lr") for t in tags)
    assert accumulator.Scalars("final/top1")[0].value == pytest.approx(record["metrics"]["top1"])
    capsys.readouterr()
    assert main(["report", "--suite", "tiny-digits", "--results-dir", str(results)]) == 0
    assert "tensorboard --logdir" in capsys.readouterr().err
    md = (results / "report" / "tiny-digits_smoke" / "leaderboard.md").read_text()
    assert "tensorboard --logdir" in md


def test_saving_artifacts_leaves_no_temporary_file_and_no_archive_warning(tmp_path, caplog):
    """The temporary name keeps ``.pt2``: torch.export.save logs a warning for any other."""
    from kdbench.benchmarks.artifacts import save_artifacts

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
    with caplog.at_level("WARNING"):
        entries = save_artifacts(model, (torch.randn(1, 3, 2, 2),), tmp_path / "run", tmp_path)
    assert set(entries) == {"pt2", "safetensors"}
    assert all("error" not in entry for entry in entries.values())
    assert not [r for r in caplog.records if "Expect archive file" in r.getMessage()]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["model.pt2",
                                                                     "model.safetensors"]
