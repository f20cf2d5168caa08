"""Reports: markdown, the static HTML page (checked in a real headless browser), Pareto plots."""

from __future__ import annotations

import os
import shutil

import pytest
from test_results import make_record

from kdbench.benchmarks.board import leaderboard
from kdbench.benchmarks.records import load_records, write_record
from kdbench.benchmarks.report import html_page, markdown, pareto_front, write_report


@pytest.fixture
def board(tmp_path):
    runs = [("teacher", [75.0, 75.5], 400, 4000), ("kd", [71.0, 72.0], 100, 1000),
            ("scratch", [69.0, 69.5], 100, 1000), ("pruned", [70.0, 70.4], 150, 800)]
    for method, accs, params, macs in runs:
        for seed, acc in enumerate(accs):
            write_record(make_record(method, seed, acc, params=params, macs=macs), tmp_path)
    for seed in range(2):
        write_record(make_record("kd", seed, 12.0 + seed, data_source="synthetic"), tmp_path)
    return leaderboard(load_records(tmp_path))


def test_pareto_front_keeps_only_non_dominated_points():
    cost = [1.0, 2.0, 2.0, 3.0, 4.0]
    score = [50.0, 60.0, 55.0, 58.0, 70.0]
    assert pareto_front(cost, score) == [0, 1, 4]


def test_markdown_separates_and_labels_data_sources(board):
    text = markdown(board, "cifar100", "smoke")
    real, synthetic = text.split("**SYNTHETIC")
    assert "| resnet56→resnet20 | kd | 2 | 71.50 ± 0.71 |" in real
    assert "12.50" not in real and "12.50" in synthetic  # no mixing of sources


def test_html_page_is_self_contained_and_labelled(board):
    page = html_page(board, "cifar100", "smoke")
    assert "<script src" not in page and "http" not in page.split("</style>")[1]
    assert page.count("<table") == 2 and "SYNTHETIC" in page
    assert 'data-source="synthetic"' in page and 'data-source="real"' in page


def test_write_report_writes_markdown_html_and_plots(board, tmp_path):
    written = write_report(board, tmp_path / "out", "cifar100", "smoke")
    names = {p.name for p in written}
    assert {"leaderboard.md", "index.html"} <= names
    for axis in ("macs", "latency", "params"):
        for source in ("real", "synthetic"):
            assert f"pareto_{axis}_{source}.png" in names and f"pareto_{axis}_{source}.svg" in names
    assert all(p.stat().st_size > 0 for p in written)


def chromium() -> str | None:
    return os.environ.get("KDBENCH_CHROMIUM") or shutil.which("chromium") \
        or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium() is None, reason="no Chromium on this machine (.ci/run installs "
                    "Debian's chromium package; set KDBENCH_CHROMIUM to use another)")
def test_html_page_renders_and_sorts_in_a_headless_browser(board, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    page_file = tmp_path / "index.html"
    page_file.write_text(html_page(board, "cifar100", "smoke"))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_file.as_uri())
        table = 'table.board[data-source="real"]'

        def methods() -> list[str]:
            return page.eval_on_selector_all(f"{table} tbody tr",
                                             "rows => rows.map(r => r.className)")

        assert page.title() == "kdbench · cifar100 · smoke"
        assert page.is_visible("text=SYNTHETIC data")
        header = f"{table} th:text-is('metric mean')"
        page.click(header)
        assert methods() == ["scratch", "pruned", "kd", "teacher"]  # ascending
        page.click(header)
        assert methods() == ["teacher", "kd", "pruned", "scratch"]  # descending
        page.click(f"{table} th:text-is('method')")
        assert methods() == ["kd", "pruned", "scratch", "teacher"]
        browser.close()
    assert errors == []
