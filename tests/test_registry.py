"""Registries and plugin discovery (built-in modules and the entry-point group)."""

from __future__ import annotations

import sys
import types
from importlib.metadata import EntryPoint

import pytest

from kdbench.benchmarks import registry
from kdbench.benchmarks.errors import UnknownNameError
from kdbench.benchmarks.method import Compressed, Method


def test_builtin_baselines_are_registered():
    assert {"teacher", "scratch", "kd"} <= set(registry.known(registry.METHODS))
    assert {"cifar100", "digits"} <= set(registry.known(registry.DATASETS))


def test_unknown_names_list_the_known_ones():
    with pytest.raises(UnknownNameError, match=r"unknown model 'resnet7'; known models: .*resnet8"):
        registry.build_model("resnet7", num_classes=10)


def test_entry_point_plugins_are_loaded(monkeypatch):
    module = types.ModuleType("kdbench_example_plugin")

    class Mine(Method):
        def run(self, ctx):
            return Compressed(model=ctx.build_student())

    module.Mine = Mine
    monkeypatch.setitem(sys.modules, module.__name__, module)
    ep = EntryPoint(name="mine", value=f"{module.__name__}:Mine", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points",
                        lambda group: [ep] if group == registry.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    try:
        assert registry.lookup(registry.METHODS, "mine") is Mine
    finally:
        registry.METHODS.module_dict.pop("mine", None)
