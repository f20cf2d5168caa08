"""Suite configs: shipped suites load, and bad keys are named in the error."""

import pytest

from benchmarks.config import (
    TrainRecipe,
    from_mapping,
    known_suites,
    load_suite,
    suite_from_dict,
)
from benchmarks.errors import ConfigError, UnknownNameError
from benchmarks.registry import MODELS, known


@pytest.mark.parametrize("name", known_suites())
def test_shipped_suites_load_with_all_budgets_and_registered_models(name):
    suite = load_suite(name)
    assert set(suite.budgets) == {"smoke", "short", "full"}
    models = set(known(MODELS))
    for budget in suite.budgets.values():
        assert budget.pairs
        for pair in budget.pairs:
            assert {pair.teacher, pair.student} <= models


def test_full_budget_is_the_papers_protocol():
    full = load_suite("cifar100").budget("full").train
    assert (full.epochs, full.lr, full.batch_size, full.weight_decay) == (240, 0.05, 64, 5e-4)
    assert (full.schedule, full.milestones, full.gamma) == ("multistep", (150, 180, 210), 0.1)


def test_unknown_recipe_key_is_named_with_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"'epoch'.*allowed keys:.*epochs"):
        from_mapping(TrainRecipe, {"epoch": 3}, "smoke.train")


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"smoke.train.epochs must be int"):
        from_mapping(TrainRecipe, {"epochs": "three"}, "smoke.train")


def test_unknown_budget_and_suite_keys():
    with pytest.raises(ConfigError, match="unknown budget 'tiny'"):
        suite_from_dict({"name": "x", "dataset": {"type": "cifar100"},
                         "budgets": {"tiny": {"pairs": [("a", "b")]}}})
    with pytest.raises(ConfigError, match="'pairz'"):
        suite_from_dict({"name": "x", "dataset": {"type": "cifar100"},
                         "budgets": {"smoke": {"pairz": [("a", "b")]}}})


def test_unknown_suite_lists_known_ones():
    with pytest.raises(UnknownNameError, match=r"unknown suite 'cifar10'.*cifar100"):
        load_suite("cifar10")
