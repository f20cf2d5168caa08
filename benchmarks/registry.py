"""The three registries (methods, models, datasets) and plugin discovery.

Built-in methods live in the ``methods`` package and register themselves on import;
out-of-tree packages plug in through the ``kdbench.methods`` entry-point group.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from mmengine.registry import Registry

from benchmarks.errors import UnknownNameError

ENTRY_POINT_GROUP = "kdbench.methods"

METHODS = Registry("method", scope="kdbench", locations=["methods"])
MODELS = Registry("model", scope="kdbench", locations=["benchmarks.models", "reid"])
DATASETS = Registry("dataset", scope="kdbench", locations=["benchmarks.data", "reid"])
# Evaluators turn a returned model into metrics (top-1, robust accuracy, rank-1/mAP, ...).
EVALUATORS = Registry("evaluator", scope="kdbench", locations=["benchmarks.evaluators", "reid"])

_plugins_loaded = False


def load_plugins() -> None:
    """Import the built-in methods and every ``kdbench.methods`` entry point (once)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    for registry in (METHODS, MODELS, DATASETS, EVALUATORS):
        registry.import_from_location()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        # An entry point may name a module (registers on import) or a Method class.
        if isinstance(obj, type) and ep.name not in METHODS.module_dict:
            METHODS.register_module(name=ep.name, module=obj)
    _plugins_loaded = True


def lookup(registry: Registry, name: str) -> Any:
    """Return the registered object or raise an error listing the known names."""
    load_plugins()
    obj = registry.module_dict.get(name)
    if obj is None:
        raise UnknownNameError(registry.name, name, registry.module_dict)
    return obj


def known(registry: Registry) -> list[str]:
    load_plugins()
    return sorted(registry.module_dict)


def build_model(name: str, num_classes: int, **kwargs: Any):
    """Build a zoo model by its registered name."""
    return lookup(MODELS, name)(num_classes=num_classes, **kwargs)
