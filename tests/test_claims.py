"""Paper claims as data: verdicts from run records (benchmarks/claims.py), `kdbench claims`."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats
from test_results import make_record

from kdbench.benchmarks.board import leaderboard
from kdbench.benchmarks.claims import Claim, claims_frame, declared_claims, write_claims
from kdbench.benchmarks.cli import main
from kdbench.benchmarks.errors import ConfigError
from kdbench.benchmarks.records import load_records, write_record
from kdbench.benchmarks.registry import METHODS, known
from kdbench.benchmarks.report import write_report
from kdbench.benchmarks.stats import welch_diff, welch_p


def record(method, seed, top1, *, teacher_top1=72.0, params=100, macs=1000, deploy="fp32",
           data_source="real", artifact_bytes=1, weight_bytes=None, extra=None):
    """A real RunRecord (the project's own dataclass), varied where a test needs it."""
    r = make_record(method, seed, top1, teacher_top1=teacher_top1, params=params, macs=macs,
                    data_source=data_source)
    return dataclasses.replace(r, deploy=deploy, artifact_bytes=artifact_bytes,
                               weight_bytes=weight_bytes,
                               metrics={**r.metrics, **(extra or {})})


def board(tmp_path, rows):
    """Write ``rows`` ((method, [top1 per seed], kwargs)) as records, read them back."""
    for method, accs, kwargs in rows:
        for seed, acc in enumerate(accs):
            write_record(record(method, seed, acc, **kwargs), tmp_path)
    return load_records(tmp_path)


def only(frame, **where):
    mask = np.ones(len(frame), dtype=bool)
    for key, value in where.items():
        mask &= frame[key] == value
    rows = frame[mask]
    assert len(rows) == 1, rows
    return rows.iloc[0]


KD = Claim("kd", "scratch", "top1", text="KD beats scratch")


# ---- statistics -------------------------------------------------------------------------
def reference_welch(a, b, confidence=0.95, null=0.0):
    """Welch–Satterthwaite interval and p computed from scratch with scipy.stats.t."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    se = math.sqrt(va + vb)
    delta = a.mean() - b.mean()
    half = scipy_stats.t.ppf(0.5 + confidence / 2, df) * se
    p = 2 * scipy_stats.t.sf(abs(delta - null) / se, df)
    return delta, delta - half, delta + half, df, p


@pytest.mark.parametrize(("a", "b"), [
    ([70.1, 71.3, 70.8, 71.9], [69.0, 69.4, 70.2]),
    ([1.0, 2.0, 4.0], [0.5, 0.6, 0.7, 0.8, 3.0]),
    ([5.0, 5.0, 5.0], [4.0, 4.5, 5.5]),  # one constant side: its variance term is 0
])
def test_welch_interval_and_p_equal_scipys(a, b):
    d = welch_diff(a, b)
    delta, lo, hi, df, p = reference_welch(a, b)
    assert (d.delta, d.ci_low, d.ci_high, d.df) == pytest.approx((delta, lo, hi, df), rel=1e-12)
    assert d.p == pytest.approx(p, rel=1e-10)
    assert d.p == pytest.approx(welch_p(a, b), rel=1e-10)  # scipy's ttest_ind(equal_var=False)
    assert (d.n_a, d.n_b, d.exact) == (len(a), len(b), False)
    shifted = welch_diff(a, b, null=0.4)  # the test of H0: Δ = 0.4 is the test of a − 0.4 vs b
    assert shifted.p == pytest.approx(reference_welch(a, b, null=0.4)[4], rel=1e-10)
    assert shifted.p == pytest.approx(welch_p(np.asarray(a) - 0.4, b), rel=1e-9)


def test_welch_with_two_constant_sides_is_exact_and_small_samples_are_nan():
    d = welch_diff([0.25] * 3, [1.0] * 3)
    assert d.exact and (d.delta, d.ci_low, d.ci_high, d.p) == (-0.75, -0.75, -0.75, 0.0)
    assert welch_diff([1.0] * 3, [1.0] * 3, null=0.0).p == 1.0
    one = welch_diff([1.0], [2.0, 3.0])
    assert one.delta == -1.5 and math.isnan(one.ci_low) and math.isnan(one.p)
    assert math.isnan(welch_diff([], [1.0, 2.0]).delta)


# ---- the Claim record -------------------------------------------------------------------
def test_claim_validation_names_the_bad_field():
    with pytest.raises(ConfigError, match=r"unknown metric 'top_1'.*top1.*speedup_"):
        Claim("kd", "scratch", "top_1", text="x")
    with pytest.raises(ConfigError, match=r"direction must be one of higher, lower"):
        Claim("kd", "scratch", "top1", direction="up", text="x")
    with pytest.raises(ConfigError, match=r"deploy must be one of fp32, int8"):
        Claim("kd", "scratch", "top1", deploy="int4", text="x")
    with pytest.raises(ConfigError, match=r"two different rows"):
        Claim("kd", "kd", "top1", text="x")
    Claim("kd", "teacher", "speedup_cpu_t1_b1", text="faster than the teacher")  # any setting
    Claim("hybrid", "hybrid", "artifact_bytes", direction="lower", deploy="int8", text="smaller")


def test_every_method_declares_claims_on_its_own_rows_or_baselines():
    import kdbench.detection.task  # noqa: F401  (the detection task registers ctkd)

    methods = {name: METHODS.get(name) for name in known(METHODS)}
    declared = {n: m.claims for n, m in methods.items()}
    baselines = {"teacher", "scratch", "kd"}
    for name, claims in declared.items():
        if name in ("teacher", "scratch"):
            assert not claims
            continue
        assert claims, f"{name} declares no claim"
        assert all(isinstance(c, Claim) for c in claims)
        assert any(c.row == name or c.row.startswith(f"{name}:") for c in claims), name
        for c in claims:
            for row in (c.row, c.beats):
                assert row == name or row.startswith(f"{name}:") or row in baselines, (name, row)
    assert set(declared_claims()) == set(methods) - {"teacher", "scratch"}
    # a suite is tested on the claims of the methods that run on it
    assert set(declared_claims("synthetic-coco")) == {"ctkd"}
    assert "ctkd" not in declared_claims("cifar100")


# ---- verdicts ---------------------------------------------------------------------------
def test_holds_contradicted_and_not_shown(tmp_path):
    records = board(tmp_path, [
        ("kd", [72.0, 72.4, 72.9], {}), ("scratch", [69.0, 69.5, 69.2], {}),
        ("lma", [70.0, 70.3, 70.1], {}), ("lma:relu", [71.0, 71.5, 71.2], {}),
        ("okddip", [69.0, 71.0, 70.0], {}),
    ])
    frame = claims_frame(records, {
        "kd": (KD,), "lma": (Claim("lma", "lma:relu", "top1", text="LMA beats ReLU"),),
        "okddip": (Claim("okddip", "scratch", "top1", text="beats scratch"),)})
    kd = only(frame, method="kd")
    assert kd["verdict"] == "holds" and kd["n_row"] == kd["n_beats"] == 3
    assert kd["delta"] == pytest.approx(np.mean([72.0, 72.4, 72.9]) - np.mean([69.0, 69.5, 69.2]))
    _, lo, hi, _, p = reference_welch([72.0, 72.4, 72.9], [69.0, 69.5, 69.2])
    assert (kd["ci_low"], kd["ci_high"], kd["p"]) == pytest.approx((lo, hi, p))
    assert (kd["teacher"], kd["student"], kd["data_source"]) == ("resnet56", "resnet20", "real")
    assert only(frame, method="lma")["verdict"] == "contradicted"
    assert only(frame, method="okddip")["verdict"] == "not shown"  # Δ ≈ +0.77, CI spans 0


def test_not_run_when_a_row_or_its_metric_is_missing(tmp_path):
    records = board(tmp_path, [("kd", [72.0, 72.4, 72.9], {}),
                               ("pruned_kd", [70.0, 70.2, 70.4], {})])
    frame = claims_frame(records, {
        "kd": (KD, Claim("kd", "scratch", "robust_top1", text="robust")),
        "pruned_kd": (Claim("pruned_kd", "pruned_kd:finetune", "top1", text="KD helps"),),
        "lma": (Claim("lma", "lma:relu", "top1", text="LMA beats ReLU"),)})
    assert set(frame["verdict"]) == {"not run"}
    missing_ref = only(frame, method="pruned_kd")
    assert missing_ref["note"] == "no records of pruned_kd:finetune"
    assert (missing_ref["n_row"], missing_ref["n_beats"]) == (3, 0)
    assert missing_ref["teacher"] == "resnet56"  # the pair where the row ran
    never = only(frame, method="lma")  # no records of the row at all: one line, no pair
    assert never["note"] == "no records of lma" and never["teacher"] == ""
    kd = frame[frame["method"] == "kd"]
    assert kd["note"].tolist() == ["no records of scratch",
                                   "no robust_top1 in the records of kd; no records of scratch"]
    assert claims_frame([], {"kd": (KD,)})["verdict"].tolist() == ["not run"]


def test_fewer_than_three_seeds_never_hold(tmp_path):
    records = board(tmp_path, [("kd", [80.0, 80.5], {}), ("scratch", [60.0, 60.4, 60.2], {})])
    row = only(claims_frame(records, {"kd": (KD,)}), method="kd")
    assert row["delta"] > 19 and row["p"] < 0.05  # significant, and still not "holds"
    assert row["verdict"] == "not shown (n<3)" and (row["n_row"], row["n_beats"]) == (2, 3)
    records = board(tmp_path / "one", [("kd", [80.0], {}), ("scratch", [60.0, 60.4, 60.2], {})])
    row = only(claims_frame(records, {"kd": (KD,)}), method="kd")
    assert row["verdict"] == "not shown (n<3)" and math.isnan(row["ci_low"])


def test_margin_within_a_drop_of_the_teacher(tmp_path):
    # Δ vs the teacher each run was measured against (72.0 in every record): about −1.1
    records = board(tmp_path, [("combine_net", [70.8, 70.9, 71.0], {})])

    def verdict(margin):
        claim = Claim("combine_net", "teacher", "top1", margin=margin, text="within")
        return only(claims_frame(records, {"combine_net": (claim,)}), method="combine_net")

    assert verdict(-2.0)["verdict"] == "holds"  # the drop is significantly under 2 points
    assert verdict(-0.5)["verdict"] == "contradicted"  # ... and significantly over 0.5
    assert verdict(-1.1)["verdict"] == "not shown"
    row = verdict(-2.0)
    assert row["beats_mean"] == 72.0 and row["n_beats"] == 3
    assert row["delta"] == pytest.approx(70.9 - 72.0)
    # p tests H0: Δ = margin, i.e. exactly (row − margin) vs the teacher
    assert row["p"] == pytest.approx(welch_p(np.array([70.8, 70.9, 71.0]) + 2.0,
                                             [72.0, 72.0, 72.0]))
    assert only(claims_frame(records, {"kd": (Claim("combine_net", "teacher", "top1",
                                                    text="beats the teacher"),)}),
                method="kd")["verdict"] == "contradicted"


def test_lower_is_better_structural_claims_are_exact(tmp_path):
    # params_ratio = 100/400 = 0.25 in every seed; the teacher's is 1 by definition
    records = board(tmp_path, [("kdas_reid", [70.0, 70.1, 70.2], {}),
                               ("combine_net", [70.0, 70.1, 70.2], {"params": 600})])

    def row(method, margin=0.0):
        claim = Claim(method, "teacher", "params_ratio", direction="lower", margin=margin,
                      text="smaller")
        return only(claims_frame(records, {method: (claim,)}), method=method)

    small = row("kdas_reid", margin=0.5)  # "under half the teacher's parameters"
    assert small["verdict"] == "holds" and small["delta"] == -0.75
    assert (small["ci_low"], small["ci_high"], small["p"]) == (-0.75, -0.75, 0.0)
    assert "exact" in small["note"]
    assert row("kdas_reid", margin=0.8)["verdict"] == "contradicted"  # 0.25 is not < 0.2
    assert row("combine_net")["verdict"] == "contradicted"  # 1.5× the teacher: larger
    # a lower claim with sampling noise on one side goes through Welch
    noisy = board(tmp_path / "noisy", [
        ("x", [1.0, 1.1, 0.9], {"params": 100}), ("x", [1.0], {"params": 90})])
    assert len(noisy) == 3  # seed 0 was rewritten: params 90, 100, 100
    claim = Claim("x", "teacher", "params_ratio", direction="lower", text="smaller")
    r = only(claims_frame(noisy, {"x": (claim,)}), method="x")
    assert r["verdict"] == "holds" and "exact" not in r["note"]


def test_deployments_are_separate_rows(tmp_path):
    for seed in range(3):
        write_record(record("hybrid_lowrank_quant", seed, 70.5 + seed / 10,
                            artifact_bytes=8000, weight_bytes=4000), tmp_path)
        write_record(record("hybrid_lowrank_quant", seed, 70.0 + seed / 10, deploy="int8",
                            artifact_bytes=5000, weight_bytes=1000), tmp_path)
    frame = claims_frame(load_records(tmp_path),
                         {"hybrid_lowrank_quant": METHODS.get("hybrid_lowrank_quant").claims})
    smaller, file, accuracy, macs = (frame.iloc[i] for i in range(4))
    assert smaller["metric"] == "weight_bytes" and smaller["delta"] == -3000
    assert smaller["verdict"] == "holds"
    assert file["metric"] == "artifact_bytes" and file["delta"] == -3000
    assert accuracy["delta"] == pytest.approx(-0.5) and accuracy["verdict"] == "holds"  # > −1
    assert macs["verdict"] == "holds"  # 1000/4000 MACs


def test_variants_get_their_base_methods_claims_on_their_own_rows(tmp_path):
    records = board(tmp_path, [("lma_k4", [70.0, 70.1, 70.2], {}),
                               ("lma_k4:relu", [69.0, 69.1, 69.2], {})])
    claims = declared_claims("cifar100", records)
    assert [(c.row, c.beats) for c in claims["lma_k4"]] == [("lma_k4", "lma_k4:relu")]
    assert "lma_k12" not in claims  # a variant without runs adds no "not run" lines
    assert only(claims_frame(records, claims), method="lma_k4")["verdict"] == "holds"


# ---- writers and the command line -------------------------------------------------------
def test_cli_writes_the_csv_and_markdown_and_exits_0(tmp_path, capsys):
    results = tmp_path / "results"
    for seed in range(3):
        write_record(record("kd", seed, 72.0 + seed / 10), results)
        write_record(record("scratch", seed, 75.0 + seed / 10), results)  # KD loses here
        write_record(record("kd", seed, 30.0 + seed / 10, data_source="synthetic"), results)
        write_record(record("scratch", seed, 20.0 + seed / 10, data_source="synthetic"),
                     results)
    code = main(["claims", "--suite", "cifar100", "--budget", "smoke",
                 "--results-dir", str(results)])
    out = capsys.readouterr()
    assert code == 0  # a contradicted claim is a finding, not a failure
    assert "contradicted" in out.out and "holds" in out.out
    csv = results / "leaderboard" / "cifar100_smoke_claims.csv"
    md = results / "leaderboard" / "cifar100_smoke_claims.md"
    assert csv.is_file() and md.is_file()
    assert not [p for p in csv.parent.iterdir() if p.name.startswith(".")]  # no temp files
    frame = pd.read_csv(csv, keep_default_na=False)
    kd = frame[(frame["method"] == "kd") & (frame["metric"].str.startswith("top1"))] \
        .set_index("data_source")
    assert kd.loc["real", "verdict"] == "contradicted" and kd.loc["synthetic", "verdict"] == "holds"
    # every claim of the methods that run on the suite is listed
    ran = load_records(results, "cifar100", "smoke")
    assert set(frame["method"]) == set(declared_claims("cifar100", ran))
    text = md.read_text()
    assert "data_source=synthetic: generated data" in text and "data_source=real" in text
    real, synthetic = text.split("data_source=synthetic")[0], text.split("data_source=synthetic")[1]
    assert "| kd | KD beats the same student trained alone" in real
    assert "| resnet56→resnet20 | top1: Δ > 0 | -3 | " in real and "contradicted" in real
    assert "| 3/3 | 0.83 (Δ, RepDistiller README" in text
    assert "holds" in synthetic.split("no records of the claim's row")[0]
    assert main(["claims", "--suite", "cifar100", "--budget", "full",
                 "--results-dir", str(results)]) == 2  # no records: an error, as for report


def test_write_claims_replaces_the_files_and_report_includes_the_claims(tmp_path):
    records = board(tmp_path / "r", [("kd", [72.0, 72.4, 72.9], {}),
                                     ("scratch", [69.0, 69.5, 69.2], {})])
    frame = claims_frame(records, {"kd": (dataclasses.replace(KD, text="KD <beats> scratch"),)})
    csv, md = write_claims(frame, tmp_path / "results", "cifar100", "smoke")
    assert csv.name == "cifar100_smoke_claims.csv" and csv.parent.name == "leaderboard"
    assert md == csv.with_suffix(".md") and "KD &lt;beats> scratch" in md.read_text()
    csv2, _ = write_claims(frame.iloc[:0], tmp_path / "results", "cifar100", "smoke")
    assert csv2 == csv and pd.read_csv(csv).empty
    paths = write_report(leaderboard(records), tmp_path / "report", "cifar100", "smoke", frame)
    text = (tmp_path / "report" / "leaderboard.md").read_text()
    assert "## kdbench · cifar100 · smoke" in text and "## Paper claims · cifar100" in text
    page = (tmp_path / "report" / "index.html").read_text()
    assert "Paper claims" in page and "KD &lt;beats&gt; scratch" in page  # escaped
    assert "<beats>" not in page and len(paths) >= 2
    plain = write_report(leaderboard(records), tmp_path / "plain", "cifar100", "smoke")
    assert "Paper claims" not in plain[0].read_text() and "Paper claims" not in plain[1].read_text()


def test_a_metric_the_suite_never_reports_is_not_applicable(tmp_path):
    records = board(tmp_path, [("kdas_reid", [80.0, 81.0, 82.0], {}),
                               ("teacher", [90.0, 90.0, 90.0], {})])
    frame = claims_frame(records, {"kdas_reid": (
        Claim("kdas_reid", "teacher", "rank1", text="beats the teacher's rank-1"),
        Claim("kdas_reid", "teacher", "robust_top1", text="robust"))})
    rank1 = only(frame, metric="rank1")
    assert rank1["verdict"] == "not applicable" and rank1["note"] == "the suite reports no rank1"
    assert only(frame, metric="robust_top1")["verdict"] == "not run"  # opt-in: could be run
