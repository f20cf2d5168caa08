"""``kdbench new-method NAME``: scaffold a method plugin and its contract test.

The generated method is a complete, working starting point (a student distilled from the
teacher with the Hinton loss) so that it passes the contract tests as generated; its
author then replaces the loss / compression step with their own idea.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path

from kdbench.benchmarks.errors import ConfigError
from kdbench.benchmarks.registry import METHODS, known

METHOD_TEMPLATE = '''"""{title}: one-line summary of the method and the paper it follows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from kdbench import METHODS, Compressed, Method, RunContext
from kdbench.methods.common import kd_kl


@METHODS.register_module("{name}")
class {cls}(Method):
    """Describe the algorithm here: what is trained, what is compressed, what is returned.

    As generated this distils the pair's student from the teacher with the Hinton loss;
    change ``run`` (and ``Config``) to implement your method.
    """

    @dataclass(frozen=True)
    class Config:
        """Hyper-parameters; the defaults are the paper's protocol for the ``full`` budget."""

        temperature: float = 4.0
        alpha: float = 0.9  # weight of the distillation term

    # Cheaper settings for the smoke budget (CI, laptops); unknown keys are errors.
    budget_defaults: ClassVar[dict[str, dict[str, Any]]] = {{"smoke": {{}}}}

    def run(self, ctx: RunContext) -> Compressed:
        student = ctx.build_student()
        teacher = ctx.teacher()  # trained, frozen, cached by the harness
        cfg = self.cfg

        def loss(batch, logits: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                t_logits = teacher(batch.x)
            return (1 - cfg.alpha) * F.cross_entropy(logits, batch.y) + cfg.alpha * kd_kl(
                logits, t_logits, cfg.temperature)

        ctx.fit(student, loss)  # the shared loop: schedule, AMP, checkpoints, progress
        # Return the deployable model; the harness evaluates and measures it.
        return Compressed(model=student)
'''

TEST_TEMPLATE = '''"""Tests of the {name} method plugin."""

from kdbench import check_contract


def test_{name}_honours_the_plugin_contract(tmp_path):
    """Runs {name} through the harness on generated CIFAR-100 data (smoke budget) and
    checks its record and returned model; add tests of your method's own invariants below."""
    records = check_contract("{name}", tmp_path)
    assert records[0]["method"] == "{name}"
'''

NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def class_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def new_method(name: str, root: Path) -> list[Path]:
    """Write ``methods/<name>.py`` and ``tests/test_<name>.py`` under ``root``."""
    if not NAME.match(name) or keyword.iskeyword(name):
        raise ConfigError(f"method name {name!r} must be a lowercase Python identifier "
                          "(letters, digits, underscores; e.g. my_kd)")
    if name in known(METHODS) or name == "common":
        raise ConfigError(f"method {name!r} already exists; pick another name")
    root = Path(root)
    if not (root / "methods").is_dir():
        raise ConfigError(f"{root} has no methods/ folder; run new-method from the kdbench "
                          "checkout (or pass --root)")
    method_file = root / "methods" / f"{name}.py"
    test_file = root / "tests" / f"test_{name}.py"
    for path in (method_file, test_file):
        if path.exists():
            raise ConfigError(f"{path} already exists; not overwriting it")
    title = name.replace("_", " ").capitalize()
    method_file.write_text(METHOD_TEMPLATE.format(name=name, cls=class_name(name), title=title))
    test_file.parent.mkdir(exist_ok=True)
    test_file.write_text(TEST_TEMPLATE.format(name=name))
    return [method_file, test_file]
