"""Named method variants of a suite (benchmarks/config.py ``Variant``, Harness.build_method)."""

from __future__ import annotations

import dataclasses

import pytest

from kdbench.benchmarks.config import Variant, load_suite, suite_from_dict
from kdbench.benchmarks.errors import ConfigError, UnknownNameError
from kdbench.benchmarks.registry import METHODS, known


def test_cifar100_defines_the_lma_segment_sweep_outside_smoke():
    suite = load_suite("cifar100")
    assert suite.variants["lma_k4"] == Variant("lma", {"num_segments": 4})
    assert suite.variants["lma_k12"] == Variant("lma", {"num_segments": 12})
    assert suite.budget("smoke").variants == ()
    for budget in ("short", "full"):
        assert {"lma_k4", "lma_k12"} <= set(suite.budget(budget).variants)


def test_a_variant_is_its_base_method_with_the_variant_config(make_harness):
    harness = make_harness(method_overrides={"lma_k4": {"temperature": 3.0}})
    method = harness.build_method("lma_k4")
    assert method.name == "lma_k4"
    assert (method.cfg.num_segments, method.cfg.temperature) == (4, 3.0)
    assert method.cfg.recipe == {}  # the base method's smoke defaults still apply
    assert "lma with num_segments=4" in method.label
    assert harness.build_method("lma").cfg.num_segments == 8


def test_variants_run_by_default_only_where_the_budget_lists_them(make_harness):
    smoke = make_harness().plan(None, [0]).methods
    harness = make_harness(budget="short")
    short = harness.plan(None, [0]).methods
    assert smoke == known(METHODS)
    assert short == [*known(METHODS), *harness.budget.variants]
    assert {"lma_k4", "lma_k12"} <= set(short)
    assert make_harness().plan(["lma_k12"], [0]).methods == ["lma_k12"]  # opt-in by name


def test_unknown_names_list_methods_and_variants(make_harness):
    with pytest.raises(UnknownNameError, match=r"unknown method 'lma_k5'.*lma_k12.*lma_k4"):
        make_harness().build_method("lma_k5")


def test_bad_variants_are_errors(make_harness):
    base = {"name": "x", "dataset": {"type": "cifar100"},
            "budgets": {"smoke": {"pairs": [("resnet14", "resnet8")], "variants": ["v"]}}}
    with pytest.raises(ConfigError, match=r"names undefined variant.*v; defined: none"):
        suite_from_dict(base)
    with pytest.raises(ConfigError, match="'configs'"):
        suite_from_dict({**base, "variants": {"v": {"method": "lma", "configs": {}}}})
    harness = make_harness()
    harness.suite = dataclasses.replace(harness.suite, variants={"kd": Variant("lma")})
    with pytest.raises(ConfigError, match=r"variant 'kd'.*name of a registered method"):
        harness.build_method("kd")
    harness.suite = dataclasses.replace(
        harness.suite, variants={"lma_bad": Variant("lma", {"segments": 4})})
    with pytest.raises(ConfigError, match=r"'segments'.*allowed keys"):
        harness.build_method("lma_bad")


def test_plain_methods_keep_their_name_and_label(make_harness):
    method = make_harness().build_method("kd")
    assert method.name == "kd" and method.label == type(method).label
