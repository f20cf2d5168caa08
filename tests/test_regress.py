"""The regression gate fails on a perturbed baseline and names what moved."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from test_results import make_record

from kdbench.benchmarks.cli import main
from kdbench.benchmarks.records import write_record
from kdbench.benchmarks.regress import (
    accuracy_tolerance,
    baseline_frame,
    baseline_path,
    compare,
    markdown_report,
)


@pytest.fixture
def results(tmp_path):
    """Three seeds of three methods, as `regress --update` would have produced."""
    out = tmp_path / "results"
    for method, accs, macs in [("teacher", [75.0, 75.4, 74.9], 4000),
                               ("kd", [71.0, 71.6, 70.8], 1000),
                               ("scratch", [69.0, 69.3, 68.7], 1000)]:
        for seed, acc in enumerate(accs):
            record = make_record(method, seed, acc, macs=macs)
            record.suite, record.test_images = "cifar100", 1000
            record.environment = {"aten_cpu_capability": "AVX2"}
            write_record(record, out)
    return out


def regress_cli(results, baselines, *extra):
    return main(["regress", "--suites", "cifar100", "--reuse", "--results-dir", str(results),
                 "--baselines", str(baselines), *extra])


def test_update_then_check_passes(results, tmp_path, capsys):
    baselines = tmp_path / "baselines"
    assert regress_cli(results, baselines, "--update") == 0
    frame = pd.read_csv(baseline_path(baselines, "cifar100"))
    kd = frame.set_index("method").loc["kd"]
    assert kd["metric_seed0"] == 71.0 and kd["n_seeds"] == 3 and kd["n_test"] == 1000
    assert kd["metric_std"] == pytest.approx(pd.Series([71.0, 71.6, 70.8]).std())
    capsys.readouterr()
    assert regress_cli(results, baselines) == 0
    assert "all" in capsys.readouterr().out


@pytest.mark.parametrize("column, value, figure", [
    ("macs", 999, "macs"),              # a structural figure: must match exactly
    ("metric_seed0", 73.5, "top1 (seed 0)"),  # accuracy beyond 3 seed std
])
def test_a_perturbed_baseline_fails_and_is_named(results, tmp_path, capsys, column, value,
                                                  figure):
    baselines = tmp_path / "baselines"
    regress_cli(results, baselines, "--update")
    path = baseline_path(baselines, "cifar100")
    frame = pd.read_csv(path)
    frame[column] = frame[column].astype(float)
    frame.loc[frame["method"] == "kd", column] = value
    frame.to_csv(path, index=False)
    capsys.readouterr()
    assert regress_cli(results, baselines) == 1
    out = capsys.readouterr().out
    assert f"| kd | {figure} |" in out and "**FAIL**" in out
    assert "1 regression(s)" in out and f"kd {figure}" in out


def test_accuracy_within_the_seed_spread_passes(results):
    base = baseline_frame(results, "cifar100")
    moved = base.copy()
    kd = moved["method"] == "kd"
    tol = accuracy_tolerance(base[kd].iloc[0])
    moved.loc[kd, "metric_seed0"] += 0.9 * tol
    assert all(c.ok for c in compare(base, moved))
    moved.loc[kd, "metric_seed0"] += 0.2 * tol
    assert [c.figure for c in compare(base, moved) if not c.ok] == ["top1 (seed 0)"]


def test_tolerance_is_the_seed_spread_or_one_test_image():
    row = pd.Series({"metric_std": 0.5, "n_test": 1000})
    assert accuracy_tolerance(row) == pytest.approx(1.5)  # 3 std
    row = pd.Series({"metric_std": 0.0, "n_test": 200})
    assert accuracy_tolerance(row) == pytest.approx(0.5)  # one image of 200
    row = pd.Series({"metric_std": math.nan, "n_test": 1000})
    assert accuracy_tolerance(row) == pytest.approx(0.1)


def test_new_or_missing_methods_fail(results):
    base = baseline_frame(results, "cifar100")
    fewer = base[base["method"] != "kd"]
    checks = compare(base, fewer)
    assert [(c.method, c.figure, c.ok) for c in checks if not c.ok] == [("kd", "row", False)]
    assert "kd" in markdown_report(compare(fewer, base))


def test_updating_one_method_keeps_the_other_rows(results, tmp_path, capsys):
    baselines = tmp_path / "baselines"
    regress_cli(results, baselines, "--update")
    path = baseline_path(baselines, "cifar100")
    frame = pd.read_csv(path)
    frame.loc[frame["method"] == "scratch", "metric_seed0"] = 12.0  # stale, must survive
    frame.loc[frame["method"] == "kd", "macs"] = 7  # stale, must be replaced
    frame.to_csv(path, index=False)
    assert regress_cli(results, baselines, "--update", "--methods", "kd") == 0
    after = pd.read_csv(path).set_index("method")
    assert sorted(after.index) == ["kd", "scratch", "teacher"]
    assert after.loc["kd", "macs"] == 1000 and after.loc["scratch", "metric_seed0"] == 12.0
    capsys.readouterr()
    # Checking only kd passes; checking everything names the stale scratch row.
    assert regress_cli(results, baselines, "--methods", "kd") == 0
    assert regress_cli(results, baselines) == 1
    assert "scratch top1 (seed 0)" in capsys.readouterr().out


def test_speedups_fail_only_when_they_drop_by_more_than_the_tolerance(results):
    base = baseline_frame(results, "cifar100")
    kd = base["method"] == "kd"
    faster, slower = base.copy(), base.copy()
    faster.loc[kd, "speedup_cpu_t1_b1"] *= 3.0  # a faster model is not a regression
    slower.loc[kd, "speedup_cpu_t1_b1"] *= 0.4  # below (1 - 50 %) of the baseline
    assert all(c.ok for c in compare(base, faster))
    assert [(c.method, c.figure) for c in compare(base, slower) if not c.ok] == [
        ("kd", "speedup_cpu_t1_b1")]


def test_speedups_with_cis_fail_only_when_the_ci_lies_wholly_below_the_baselines():
    base = pd.DataFrame([{"suite": "cifar100", "data_source": "real", "teacher": "t",
                          "student": "s", "method": "kd", "params": 1, "macs": 1,
                          "params_ratio": 1.0, "macs_ratio": 1.0, "metric_name": "top1",
                          "metric_seed0": 70.0, "metric_std": 0.5, "n_test": 1000,
                          "speedup_cpu_t1_b1": 2.0, "ci_low_speedup_cpu_t1_b1": 1.8,
                          "ci_high_speedup_cpu_t1_b1": 2.2}])

    def now(median, low, high):
        return base.assign(speedup_cpu_t1_b1=median, ci_low_speedup_cpu_t1_b1=low,
                           ci_high_speedup_cpu_t1_b1=high)

    def failed(frame):
        return [c.figure for c in compare(base, frame) if not c.ok]

    assert failed(now(1.3, 0.9, 1.7)) == []  # noisy: a wide CI reaching the baseline's
    assert failed(now(1.5, 1.45, 1.55)) == ["speedup_cpu_t1_b1"]  # wholly below 0.9 x 1.8
    assert failed(now(1.7, 1.63, 1.66)) == []  # within the 10 % tolerance
    [check] = [c for c in compare(base, now(1.5, 1.45, 1.55)) if c.figure.startswith("speed")]
    assert "CI" in check.tolerance


def test_each_suite_gates_its_own_methods():
    from kdbench.benchmarks.regress import gate_methods, gate_of

    assert gate_methods("cifar100", None) is None  # every registered method
    assert gate_methods("digits", None) == list(gate_of("digits").methods)
    assert gate_methods("digits", ["kd", "lma"]) == ["kd"]
    assert gate_methods("digits", ["lma"]) == []


def test_the_gated_suites_and_their_data_come_from_the_suite_files(tmp_path):
    from kdbench.benchmarks.regress import dataset_overrides, gate_of, gated_suites

    # the suites with a `regress` section; cifar100-vgg16 inherits cifar100's and drops it
    assert gated_suites() == ["cifar100", "digits", "fashion-mnist"]
    assert gate_of("digits").methods == ("teacher", "scratch", "kd")
    assert [s for s in gated_suites() if gate_of(s).claims] == ["fashion-mnist"]
    # CIFAR-100 always on generated data: a root under the gate's cache that never holds it
    assert dataset_overrides("cifar100", tmp_path) == {
        "root": str(tmp_path / "regress-uses-generated-data"), "download": False,
        "synthetic_fallback": True}
    assert dataset_overrides("digits", tmp_path) == {}
    assert dataset_overrides("fashion-mnist", tmp_path) == {}


def test_ratios_round_tripped_through_the_csv_still_match(tmp_path):
    # 83892 / 180636 has no short decimal form: the stored 10 digits must still compare equal
    from kdbench.benchmarks.regress import compare

    row = {"suite": "cifar100", "data_source": "synthetic", "teacher": "t", "student": "s",
           "method": "kd", "params": 83892, "macs": 12_510_000, "params_ratio": 83892 / 180636,
           "macs_ratio": 12_510_000 / 26_660_000, "metric_name": "top1", "metric_seed0": 14.0,
           "metric_mean": 14.0, "metric_std": 0.5, "n_seeds": 3, "n_test": 1000,
           "speedup_cpu_t1_b1": 1.9, "speedup_cpu_t1_b64": 2.0}
    now = pd.DataFrame([row])
    now.to_csv(tmp_path / "b.csv", index=False, float_format="%.10g")
    stored = pd.read_csv(tmp_path / "b.csv")
    assert stored.loc[0, "params_ratio"] != row["params_ratio"]  # the CSV did round it
    assert all(c.ok for c in compare(stored, now))
    now.loc[0, "macs"] += 1
    assert [c.figure for c in compare(stored, now) if not c.ok] == ["macs"]


def test_only_baseline_rows_of_the_runs_isa_compare(results, tmp_path, capsys):
    baselines = tmp_path / "baselines"
    regress_cli(results, baselines, "--update")
    path = baseline_path(baselines, "cifar100")
    frame = pd.read_csv(path)
    other = frame.assign(isa="AVX512", macs=frame["macs"] + 1)  # what AVX-512 kernels trained
    pd.concat([frame, other]).to_csv(path, index=False)
    assert regress_cli(results, baselines) == 0  # the AVX512 rows are not compared
    assert "(ISA AVX2)" in capsys.readouterr().out


def test_an_update_keeps_the_rows_of_other_isas(results, tmp_path):
    baselines = tmp_path / "baselines"
    regress_cli(results, baselines, "--update")
    path = baseline_path(baselines, "cifar100")
    frame = pd.read_csv(path)
    pd.concat([frame, frame.assign(isa="AVX512", metric_seed0=1.0)]).to_csv(path, index=False)
    assert regress_cli(results, baselines, "--update") == 0
    after = pd.read_csv(path)
    assert sorted(after["isa"].unique()) == ["AVX2", "AVX512"] and len(after) == 6
    assert (after[after["isa"] == "AVX512"]["metric_seed0"] == 1.0).all()


def test_no_baseline_for_the_runs_isa_is_refused_not_a_wall_of_regressions(
        results, tmp_path, capsys):
    baselines = tmp_path / "baselines"
    regress_cli(results, baselines, "--update")
    path = baseline_path(baselines, "cifar100")
    pd.read_csv(path).assign(isa="AVX512").to_csv(path, index=False)
    capsys.readouterr()
    assert regress_cli(results, baselines) == 2
    out = " ".join(capsys.readouterr().err.split())
    assert "no baseline rows for the ISA these runs used (AVX2)" in out and "AVX512" in out
    assert "FAIL" not in out


def test_a_baseline_without_an_isa_column_is_refused(results, tmp_path, capsys):
    baselines = tmp_path / "baselines"
    regress_cli(results, baselines, "--update")
    path = baseline_path(baselines, "cifar100")
    pd.read_csv(path).drop(columns="isa").to_csv(path, index=False)
    capsys.readouterr()
    assert regress_cli(results, baselines) == 2
    assert "no 'isa' column" in capsys.readouterr().err


def test_reuse_on_an_empty_results_dir_is_a_message(tmp_path, capsys):
    assert regress_cli(tmp_path / "empty", tmp_path / "baselines") == 2
    out = " ".join(capsys.readouterr().err.split())
    assert "no cifar100 smoke records" in out and "without --reuse" in out


def test_a_gate_run_re_runs_itself_with_the_kernels_pinned(tmp_path, monkeypatch):
    import kdbench.benchmarks.cli as cli
    from kdbench.benchmarks import isa

    if isa.cannot_pin():
        pytest.skip(f"no pin on this machine: {isa.cannot_pin()}")
    calls = []
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.setattr(cli.subprocess, "call",
                        lambda cmd, env: calls.append((cmd, env)) or 0)
    argv = ["regress", "--suites", "digits", "--results-dir", str(tmp_path)]
    assert main(argv) == 0
    (cmd, env), = calls
    assert cmd[-len(argv):] == argv and cmd[1:3] == ["-m", "kdbench.benchmarks.cli"]
    assert isa.is_pinned(env) and env["ONEDNN_MAX_CPU_ISA"] == "AVX2"


def test_the_gate_keeps_teachers_of_its_own_isa_apart(tmp_path, monkeypatch):
    """A teacher cached by a user's unpinned run was trained with other kernels."""
    import torch

    import kdbench.benchmarks.runner
    from kdbench.benchmarks.regress import run_smoke

    seen = {}

    class Recording:
        def __init__(self, suite, budget, options):
            self.options = seen["options"] = options

        def run(self, methods, seeds):
            seen["ran"] = (methods, seeds, self.options.force)

    monkeypatch.setattr(kdbench.benchmarks.runner, "Harness", Recording)
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    run_smoke("digits", [0], tmp_path / "results", tmp_path / "cache", ["kd"])
    isa = torch.backends.cpu.get_cpu_capability()
    # a teacher cached under another MKL branch (or none) was computed by other kernels too
    assert seen["options"].cache_dir == tmp_path / "cache" / f"regress-{isa}+MKL_CBWR=COMPATIBLE"
    assert seen["ran"] == (["kd"], [0], True)


def test_a_check_says_first_when_its_teachers_are_not_the_baselines(results, tmp_path, capsys):
    """Another teacher moves every student: the report names that before the moves."""
    baselines = tmp_path / "baselines"
    regress_cli(results, baselines, "--update")
    capsys.readouterr()
    assert regress_cli(results, baselines) == 0
    assert "teachers differ" not in capsys.readouterr().out
    path = baseline_path(baselines, "cifar100")
    pd.read_csv(path).assign(teacher_sha256="f" * 64).to_csv(path, index=False)
    regress_cli(results, baselines)
    out = " ".join(capsys.readouterr().out.split())
    assert "The teachers differ from the baseline's" in out
    assert "teacher sha256 000000000000, the baseline's ffffffffffff" in out
