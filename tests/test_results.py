"""Run records and the leaderboard derived from them."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import pytest

from kdbench.benchmarks.atomic import write_json
from kdbench.benchmarks.board import leaderboard
from kdbench.benchmarks.errors import KdbenchError
from kdbench.benchmarks.records import (
    SCHEMA_VERSION,
    RunRecord,
    load_records,
    record_path,
    write_record,
)
from kdbench.benchmarks.table import render_table, speedup_cell


def make_record(method="kd", seed=0, top1=70.0, teacher_top1=72.0, data_source="real",
                reference="teacher", params=100, macs=1000, budget="smoke", speedup=2.0):
    latency = [{"setting": {"device": "cpu", "threads": 1, "batch": 1},
                "student": {"stats": {"median_ms": 1.0}}, "speedup": speedup}]
    return RunRecord(
        run_id=f"{method}{seed}", created="2026-11-24T00:00:00+00:00", suite="cifar100",
        dataset="cifar100", data_source=data_source, budget=budget, method=method,
        teacher="resnet56", student="resnet20", seed=seed, metric_name="top1",
        metrics={"top1": top1, "top5": top1 + 20}, accuracy_statistic="last_epoch",
        teacher_metrics={"top1": teacher_top1, "top5": 90.0},
        teacher_checkpoint={"sha256": "0" * 64, "source": "cache", "path": "t.pt"},
        reference=reference, params=params, params_nonzero=params, macs=macs, flops=2 * macs,
        artifact_bytes=1, teacher_params=400, teacher_macs=4000, params_ratio=params / 400,
        macs_ratio=macs / 4000, model_report={}, latency=latency, wall_time_s=1.0,
    )


def write(tmp_path, *records):
    for r in records:
        write_record(r, tmp_path)


def test_record_round_trip_and_layout(tmp_path):
    path = write_record(make_record(), tmp_path)
    assert path == record_path(tmp_path, "cifar100", "smoke", "real", "kd", "resnet56",
                               "resnet20", 0)
    data = json.loads(path.read_text())
    assert data == json.loads(json.dumps(dataclasses.asdict(make_record())))
    assert data["schema_version"] == SCHEMA_VERSION
    assert [p.name for p in path.parent.iterdir()] == ["seed0.json"]  # no temp files left


def test_atomic_write_keeps_the_old_file_when_serialisation_fails(tmp_path):
    path = tmp_path / "r.json"
    write_json({"a": 1}, path)
    with pytest.raises(TypeError):
        write_json({"a": object()}, path)
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_wrong_schema_version_is_refused_with_a_hint(tmp_path):
    path = write_record(make_record(), tmp_path)
    data = json.loads(path.read_text())
    data["schema_version"] = 999
    path.write_text(json.dumps(data))
    with pytest.raises(KdbenchError, match="schema_version 999"):
        load_records(tmp_path, "cifar100", "smoke")


def test_leaderboard_aggregates_seeds_with_stats(tmp_path):
    write(tmp_path,
          *[make_record("kd", s, t, teacher_top1=72.0) for s, t in enumerate([70.0, 71.0, 72.0])],
          *[make_record("scratch", s, t) for s, t in enumerate([60.0, 60.5, 61.0])])
    board = leaderboard(load_records(tmp_path, "cifar100", "smoke")).set_index("method")
    kd = board.loc["kd"]
    assert kd["n"] == 3 and kd["seeds"] == "0,1,2"
    assert kd["metric_mean"] == pytest.approx(71.0) and kd["metric_std"] == pytest.approx(1.0)
    assert kd["ci_low"] == pytest.approx(71.0 - 4.302653 / math.sqrt(3), abs=1e-4)
    assert kd["delta_vs_reference"] == pytest.approx(-1.0)  # vs the teacher's 72.0
    assert kd["tied_with_best"] is True and board.loc["scratch", "tied_with_best"] is False
    assert kd["params"] == 100 and kd["params_ratio"] == pytest.approx(0.25)
    assert kd["speedup_cpu_t1_b1"] == pytest.approx(2.0)
    assert kd["top5_mean"] == pytest.approx(91.0) and kd["top5_std"] == pytest.approx(1.0)


def test_reference_can_be_another_method(tmp_path):
    write(tmp_path,
          *[make_record("okddip", s, t, reference="scratch") for s, t in enumerate([62, 63])],
          *[make_record("scratch", s, t) for s, t in enumerate([60, 61])])
    board = leaderboard(load_records(tmp_path)).set_index("method")
    assert board.loc["okddip", "delta_vs_reference"] == pytest.approx(2.0)
    assert board.loc["okddip", "reference"] == "scratch"


def test_rows_never_mix_data_sources_or_budgets(tmp_path):
    write(tmp_path, make_record("kd", 0, 70, data_source="real"),
          make_record("kd", 1, 10, data_source="synthetic"),
          make_record("kd", 2, 50, budget="short"))
    board = leaderboard(load_records(tmp_path))
    assert len(board) == 3
    assert set(board["n"]) == {1}
    assert set(zip(board["data_source"], board["budget"], strict=True)) == {
        ("real", "smoke"), ("synthetic", "smoke"), ("real", "short")}


def test_terminal_table_renders_every_row(tmp_path):
    write(tmp_path, make_record("kd", 0), make_record("scratch", 0, 60))
    table = render_table(leaderboard(load_records(tmp_path)))
    assert table.row_count == 2


def _rendered(table, width: int) -> list[str]:
    from rich.console import Console

    console = Console(width=width, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(table)
    return console.export_text().splitlines()


def test_the_terminal_table_fits_100_columns_with_at_most_two_lines_a_row(tmp_path):
    names = ["teacher", "scratch", "kd", "robust_prune_kd:magnitude_adv_ft",
             "channel_selection:l1_finetune", "progressive_block_kd:finetuned",
             "hybrid_lowrank_quant"]
    for i, name in enumerate(names):
        for seed in range(3):
            record = make_record(name, seed, 60.0 + i + seed / 10, reference="scratch")
            record.method_label = "a long label that only the wide table shows " * 2
            record.notes = ["a note the wide table shows " * 3]
            record.metrics["robust_top1"] = 30.0 + i
            write_record(record, tmp_path)
    board = leaderboard(load_records(tmp_path))
    lines = _rendered(render_table(board, title="fashion-mnist · short"), 100)
    assert max(map(len, lines)) <= 100
    rule = next(i for i, ln in enumerate(lines) if "───" in ln)  # under the header
    body = lines[rule + 1:]
    body = body[:next(i for i, ln in enumerate(body) if not ln.strip())]  # the rows
    starts = [i for i, ln in enumerate(body) if ln.split()[1:2] == ["3"]]  # n = 3: a row
    assert len(starts) == len(names)
    assert all(b - a <= 2 for a, b in zip(starts, [*starts[1:], len(body)], strict=True))
    assert "resnet56→resnet20" in lines[0] and "real data" in lines[0]  # one pair: the title
    assert not any("a long label" in ln for ln in lines)
    wide = "\n".join(_rendered(render_table(board, wide=True), 250))
    assert "a long label" in wide and "a note the wide table shows" in wide


def test_a_single_seed_row_is_never_best_or_tied(tmp_path):
    write(tmp_path, make_record("kd", 0, 80.0), make_record("scratch", 0, 60.0))
    board = leaderboard(load_records(tmp_path))
    assert board["tied_with_best"].isna().all()
    text = "\n".join(_rendered(render_table(board), 100))
    assert "best" not in text


def test_speedups_carry_their_ci_and_a_rerun_flag_is_never_dropped(tmp_path):
    for seed, (speedup, low, high, noise) in enumerate(
            [(2.0, 1.9, 2.1, "ok"), (2.2, 2.0, 2.4, "rerun"), (2.1, 2.05, 2.15, "ok")]):
        record = make_record("kd", seed, 70.0 + seed, speedup=speedup)
        record.latency[0].update(speedup_ci_low=low, speedup_ci_high=high, noise=noise)
        write_record(record, tmp_path)
    board = leaderboard(load_records(tmp_path))
    row = board.iloc[0]
    assert row["speedup_cpu_t1_b1"] == 2.1  # the median over seeds
    assert (row["ci_low_speedup_cpu_t1_b1"], row["ci_high_speedup_cpu_t1_b1"]) == (1.9, 2.4)
    assert row["noise_speedup_cpu_t1_b1"] == "rerun"  # the worst seed's flag
    assert speedup_cell(row, "speedup_cpu_t1_b1") == "2.10×±0.25⚠"
    text = "\n".join(_rendered(render_table(board), 100))
    assert "2.10×±0.25⚠" in text
    from kdbench.benchmarks.report import markdown

    assert "2.10×±0.25⚠" in markdown(board, "cifar100", "smoke")


def test_the_wide_table_in_a_log_is_as_wide_as_its_columns_need(tmp_path):
    """Every deploy track at 1/2 threads and batch 1/64 is 12 speed-up columns: at a fixed
    200 columns rich squeezed the method and pair cells to a few letters."""
    from kdbench.benchmarks.cli import log_width

    name = "robust_prune_kd:magnitude_adv_ft"
    record = make_record(name, 0)
    record.latency = [
        {"setting": {"device": "cpu", "threads": t, "batch": b, "mode": mode},
         "student": {"stats": {"median_ms": 1.0}}, "speedup": 1.5}
        for mode in ("eager", "compiled", "ort") for t in (1, 2) for b in (1, 64)]
    write(tmp_path, record)
    board = leaderboard(load_records(tmp_path))
    table = render_table(board, wide=True)
    width = log_width(table, wide=True)
    assert 200 <= width <= 400
    lines = _rendered(table, width)
    assert any(name in ln for ln in lines)  # the method name on one line, not folded
    assert any("resnet56→resnet20" in ln for ln in lines)
    assert log_width(render_table(board), wide=False) == 100
