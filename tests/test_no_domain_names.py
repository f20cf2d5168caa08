"""No domain names in the harness: which methods run, on which data, and where a task's
package lives come from the suite files (``benchmarks/suites``) and the registrations.

The harness (``benchmarks/`` without its suites, and ``noxfile.py``) may name the board's
reference rows (``teacher``, ``scratch``: every method names one), but no other registered
method and no task package as a string literal.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kdbench.benchmarks.config import known_suites, load_suite
from kdbench.benchmarks.registry import METHODS, known, suite_task_packages

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_ROWS = {"teacher", "scratch"}
# A literal that is a name, or a list of names such as "teacher,scratch,kd" or "kd:control"
# (prose, e.g. help text "e.g. kd or pruned_kd:finetune", has spaces and is not one).
NAME_LIST = re.compile(r"[\w.\-]+(?:[,:@][\w.\-]+)*")


def harness_sources() -> list[Path]:
    suites = ROOT / "benchmarks" / "suites"
    files = [p for p in sorted((ROOT / "benchmarks").rglob("*.py")) if suites not in p.parents]
    return [*files, ROOT / "noxfile.py"]


def domain_names() -> dict[str, str]:
    """name -> what it is: the registered methods but the reference rows, the task packages."""
    names = {name: "method" for name in known(METHODS) if name not in REFERENCE_ROWS}
    names.update({package: "task package" for package in suite_task_packages()})
    return names


def literal_hits(source: str, names: dict[str, str]) -> list[tuple[int, str, str]]:
    """(line, literal, what it names) of every string literal naming one of ``names``."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            continue
        if not NAME_LIST.fullmatch(node.value):
            continue
        named = [names[word] for word in re.split(r"[,:@]", node.value) if word in names]
        if named:
            hits.append((node.lineno, node.value, named[0]))
    return sorted(hits)


def test_the_scan_finds_what_the_harness_used_to_name():
    names = {"kd": "method", "kdas_reid": "method", "reid": "task package"}
    source = ('MODELS = Registry("model", locations=["kdbench.benchmarks.models", "reid"])\n'
              'REID_METHODS = "teacher,scratch,kd,kdas_reid"\n'
              'REGRESS_METHODS = {"digits": ("teacher", "scratch", "kd")}\n'
              'HELP = "e.g. kd or pruned_kd:finetune"\n'
              '"""A docstring naming kd and reid."""\n'
              'row = f"{method}:kd"\n')
    assert [(line, what) for line, _, what in literal_hits(source, names)] == [
        (1, "task package"), (2, "method"), (3, "method")]


def test_the_reference_rows_are_the_only_methods_the_harness_may_name():
    names = domain_names()
    assert not REFERENCE_ROWS & set(names)
    assert {"teacher", "scratch"} <= set(known(METHODS))
    assert len(names) > len(suite_task_packages())  # there are methods to look for


def test_the_harness_names_no_method_or_task_package():
    names = domain_names()
    hits = [f"{path.relative_to(ROOT)}:{line}: {literal!r} names a {what}"
            for path in harness_sources()
            for line, literal, what in literal_hits(path.read_text(), names)]
    assert not hits, ("domain names in the harness (they belong in the suite files or the "
                      "registrations):\n" + "\n".join(hits))


def test_the_task_packages_are_declared_by_the_suites():
    declared = {p for name in known_suites() for p in load_suite(name).imports}
    assert set(suite_task_packages()) == declared
    assert declared  # at least one suite needs a task package (e.g. ReID)


_FRESH = """
import json, sys
from kdbench.benchmarks.config import known_suites, load_suite, raw_suite, SUITES_DIR
from kdbench.benchmarks.registry import DATASETS, EVALUATORS, METHODS, MODELS, known, unavailable
missing = []
known(METHODS)
for name in known_suites():
    if set(raw_suite(SUITES_DIR / f"{name}.py").get("imports") or ()) & set(unavailable):
        continue  # its optional extra is not installed here
    suite = load_suite(name)
    wanted = [(MODELS, m) for b in suite.budgets.values() for p in b.pairs
              for m in (p.teacher, p.student)]
    wanted += [(DATASETS, suite.dataset["type"])] + [(EVALUATORS, e) for e in suite.evaluators]
    methods = [*suite.default_methods, *(suite.regress.methods or () if suite.regress else ())]
    wanted += [(METHODS, m) for m in methods if m not in suite.variants]
    missing += [f"{name}: {r.name} {n}" for r, n in wanted if n not in known(r)]
print(json.dumps(missing))
"""


@pytest.mark.parametrize("first", ["suites", "list"])
def test_every_suite_finds_its_names_in_a_fresh_process(first):
    """Nothing imported before: the suites' declared packages register what they name."""
    if first == "suites":
        out = subprocess.run([sys.executable, "-c", _FRESH], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
        assert json.loads(out.strip().splitlines()[-1]) == []
        return
    # `kdbench list models` with no suite loaded lists the task packages' models too
    out = subprocess.run([sys.executable, "-m", "kdbench.benchmarks.cli", "list", "models"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    from kdbench.benchmarks.registry import unavailable

    suites = [load_suite(name) for name in known_suites()
              if not set(load_suite_imports(name)) & set(unavailable)]
    pairs = {m for suite in suites for b in suite.budgets.values()
             for p in b.pairs for m in (p.teacher, p.student)}
    assert pairs <= set(out), sorted(pairs - set(out))


def load_suite_imports(name: str) -> tuple[str, ...]:
    from kdbench.benchmarks.config import SUITES_DIR, raw_suite

    return tuple(raw_suite(SUITES_DIR / f"{name}.py").get("imports") or ())


def test_a_task_package_missing_an_optional_dependency_is_left_out_of_the_listing(
        tmp_path, monkeypatch):
    from kdbench.benchmarks import registry
    from kdbench.benchmarks.errors import ConfigError
    from kdbench.benchmarks.registry import import_task_packages

    (tmp_path / "kdbench_tmp_extra_task.py").write_text("import kdbench_no_such_extra\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "unavailable", {})
    import_task_packages(["kdbench_tmp_extra_task"], optional=True)  # listing: skipped
    assert list(registry.unavailable) == ["kdbench_tmp_extra_task"]
    with pytest.raises(ConfigError, match="kdbench_no_such_extra"):  # the suite: an error
        import_task_packages(["kdbench_tmp_extra_task"])
    with pytest.raises(ConfigError, match="kdbench_tmp_missing_task"):  # not there: an error
        import_task_packages(["kdbench_tmp_missing_task"], optional=True)


def test_a_suite_file_imports_the_task_packages_it_declares(tmp_path, monkeypatch):
    from kdbench.benchmarks.errors import ConfigError
    from kdbench.benchmarks.registry import MODELS

    (tmp_path / "kdbench_tmp_task.py").write_text(
        "from kdbench.benchmarks.registry import MODELS\n"
        "MODELS.register_module('tmp_task_net', module=lambda num_classes: None)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    base = ('name = "tmp"\ndataset = dict(type="digits")\n'
            'budgets = dict(smoke=dict(pairs=[("tmp_task_net", "tmp_task_net")]))\n')
    (tmp_path / "tmp.py").write_text(base + 'imports = ("kdbench_tmp_task",)\n')
    try:
        assert load_suite(str(tmp_path / "tmp.py")).imports == ("kdbench_tmp_task",)
        assert "tmp_task_net" in MODELS.module_dict
    finally:
        MODELS.module_dict.pop("tmp_task_net", None)
        sys.modules.pop("kdbench_tmp_task", None)
    (tmp_path / "bad.py").write_text(base + 'imports = ("kdbench_no_such_task",)\n')
    with pytest.raises(ConfigError, match="kdbench_no_such_task"):
        load_suite(str(tmp_path / "bad.py"))
