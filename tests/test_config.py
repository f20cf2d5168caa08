"""Suite configs: shipped suites load, and bad keys are named in the error."""

from dataclasses import dataclass, field
from typing import Annotated, Literal

import pytest
from annotated_types import Ge, Interval

from kdbench.benchmarks.config import (
    RecipeChanges,
    TrainRecipe,
    from_mapping,
    known_suites,
    load_suite,
    suite_from_dict,
)
from kdbench.benchmarks.errors import ConfigError, UnknownNameError
from kdbench.benchmarks.registry import MODELS, known


@pytest.mark.parametrize("name", known_suites())
def test_shipped_suites_load_with_all_budgets_and_registered_models(name):
    suite = load_suite(name)  # imports the suite's task package (its models, datasets)
    assert suite.budgets and set(suite.budgets) <= {"smoke", "short", "full"}
    if not suite.imports:  # the image suites run at every budget
        assert set(suite.budgets) == {"smoke", "short", "full"}
    models = set(known(MODELS))
    for budget in suite.budgets.values():
        assert budget.pairs
        for pair in budget.pairs:
            assert {pair.teacher, pair.student} <= models


@pytest.mark.parametrize("name", known_suites())
def test_combine_nets_held_out_images_fit_every_training_subset(name):
    # A fashion-mnist short sweep once lost all five combine_net seeds to val_images=2000
    # of a 2,000-image training subset: the holdout must leave images to calibrate on.
    from kdbench.benchmarks.registry import METHODS, lookup

    suite, cls = load_suite(name), lookup(METHODS, "combine_net")
    for budget in suite.budgets.values():
        if budget.train_subset is None:
            continue
        cfg = cls.make_config(budget.name, suite.methods.get("combine_net"),
                              budget.methods.get("combine_net"), None, None, name="combine_net")
        assert 0 < cfg.val_images < budget.train_subset, (budget.name, cfg.val_images)


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


@dataclass(frozen=True)
class _Declared:
    mode: Literal["fast", "exact"] = "fast"
    ratio: Annotated[float, Interval(gt=0, le=1)] = 0.5
    steps: Annotated[int | None, Ge(1)] = None
    names: tuple[Literal["a", "b"], ...] = ("a",)
    recipe: RecipeChanges = field(default_factory=dict)


def test_fields_declare_their_choices_and_ranges():
    ok = from_mapping(_Declared, {"mode": "exact", "ratio": 1, "steps": 3, "names": ["b", "a"],
                                  "recipe": {"epochs": 2}}, "cfg")
    assert (ok.mode, ok.ratio, ok.steps, ok.names, ok.recipe) == (
        "exact", 1.0, 3, ("b", "a"), {"epochs": 2})
    assert from_mapping(_Declared, {"steps": None}, "cfg").steps is None
    for data, message in (
            ({"mode": "slow"}, "cfg.mode must be one of fast, exact; got 'slow'"),
            ({"ratio": 0}, r"cfg.ratio must be in \(0, 1\]; got 0"),
            ({"ratio": 1.5}, r"cfg.ratio must be in \(0, 1\]; got 1.5"),
            ({"steps": 0}, "cfg.steps must be >= 1; got 0"),
            ({"names": ["a", "c"]}, r"cfg.names\[1\] must be one of a, b; got 'c'"),
            ({"recipe": {"epoch": 2}}, r"unknown key 'epoch' in cfg.recipe; allowed keys"),
            ({"recipe": {"epochs": 0}}, "cfg.recipe: epochs must be a positive integer")):
        with pytest.raises(ConfigError, match=message):
            from_mapping(_Declared, data, "cfg")
