"""Generic module replacement: swap every submodule that matches, in any architecture."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def replace_modules(model: nn.Module, match: Callable[[nn.Module], bool],
                    make: Callable[[str, nn.Module], nn.Module]) -> int:
    """Replace each submodule ``m`` with ``match(m)`` by ``make(qualified_name, m)``.

    Works on any nesting (Sequential, ModuleList, attributes); the root itself is never
    replaced. Returns how many modules were replaced.
    """
    targets = [(name, m) for name, m in model.named_modules() if name and match(m)]
    for name, module in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, make(name, module))
    return len(targets)
