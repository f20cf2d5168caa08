"""The three registries (methods, models, datasets) and plugin discovery.

Built-in methods live in the ``methods`` package and register themselves on import;
out-of-tree packages plug in through the ``kdbench.methods`` entry-point group. A task
package (models, datasets and evaluators of one task, e.g. a ReID package) is named by the
suites that need it, in their ``imports`` field: it registers its names on import, and the
registry imports the packages every suite declares, so ``kdbench list models`` and every
suite find them. The registry itself names no task.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable
from importlib.metadata import entry_points
from typing import Any

from mmengine.registry import Registry

from kdbench.benchmarks.errors import ConfigError, UnknownNameError

ENTRY_POINT_GROUP = "kdbench.methods"

METHODS = Registry("method", scope="kdbench", locations=["kdbench.methods"])
MODELS = Registry("model", scope="kdbench", locations=["kdbench.benchmarks.models"])
DATASETS = Registry("dataset", scope="kdbench", locations=["kdbench.benchmarks.data"])
# Evaluators turn a returned model into metrics (top-1, robust accuracy, rank-1/mAP, ...).
EVALUATORS = Registry("evaluator", scope="kdbench", locations=["kdbench.benchmarks.evaluators"])

_plugins_loaded = False


# Task packages a suite declares whose optional dependencies are not installed (e.g. an
# extra): package -> the error. Their names are missing until the dependency is installed;
# loading a suite that needs one says why.
unavailable: dict[str, str] = {}


def import_task_packages(packages: Iterable[str], where: str = "suite", *,
                         optional: bool = False) -> None:
    """Import the task packages a suite declares (``imports``): they register their models,
    datasets and evaluators on import. With ``optional``, a package that needs a dependency
    which is not installed (e.g. an extra) is skipped and noted in ``unavailable``; a package
    that is not there, or fails otherwise, is an error either way."""
    for package in packages:
        try:
            importlib.import_module(package)
        except ImportError as exc:
            # the distribution of the module that could not be imported, when known
            missing = (exc.name or "").split(".")[0]
            if (optional and isinstance(exc, ModuleNotFoundError) and missing
                    and missing != package.split(".")[0]
                    and importlib.util.find_spec(missing) is None):
                unavailable[package] = str(exc)
                continue
            raise ConfigError(f"{where} imports {package!r}, which cannot be imported: {exc}"
                              ) from exc


def suite_task_packages() -> list[str]:
    """The task packages that the suites in ``benchmarks/suites`` declare (``imports``)."""
    from kdbench.benchmarks.config import SUITES_DIR, known_suites, raw_suite

    packages: dict[str, None] = {}
    for name in known_suites():
        packages.update(dict.fromkeys(raw_suite(SUITES_DIR / f"{name}.py").get("imports") or ()))
    return list(packages)


def load_task_packages() -> None:
    """Import every suite's task packages, so that listing a registry shows their names too;
    one whose optional dependency is missing is left out (the suite needing it fails). A run
    imports only its own suite's (``load_suite``): no run pays for another task's imports."""
    import_task_packages(suite_task_packages(), "a suite in benchmarks/suites", optional=True)


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
