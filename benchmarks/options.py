"""How a run is carried out, as one typed object: ``kdbench run``, ``kdbench sweep``, the
Python API and the nox sessions all build a :class:`RunOptions` and hand it to the harness.

The suite and budget say *what* is run; these options say where the results and caches go,
on which device, and which extra measurements (deployments, evaluators, latency) are taken.

The command-line options of a run are declared here once (:func:`add_run_options`) and read
back once (:func:`run_options_from`): ``kdbench run`` and ``kdbench sweep`` (and the nox
sessions, which call ``kdbench run``) take the same ones.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdbench.benchmarks.config import BUDGETS
from kdbench.benchmarks.errors import ConfigError
from kdbench.benchmarks.mlflow_log import DEFAULT_URI as MLFLOW_DEFAULT_URI

if TYPE_CHECKING:
    from kdbench.benchmarks.config import SuiteConfig


@dataclass(frozen=True)
class RunOptions:
    """Everything about a run that is not the suite, the budget, the methods or the seeds."""

    results_dir: Path = Path("results")
    cache_dir: Path | None = None  # teacher cache, generated data, work dirs; None: the default
    device: str = "cpu"  # cpu, cuda, cuda:N or auto
    dataset_overrides: Mapping[str, Any] = field(default_factory=dict)
    teacher_checkpoints: Mapping[str, str] = field(default_factory=dict)  # arch -> state_dict
    method_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    measure_latency: bool = True
    evaluators: tuple[str, ...] = ()  # besides the suite's
    deploy: tuple[str, ...] = ()  # besides fp32 and the budget's
    force: bool = False  # re-run runs that have a record of this configuration
    resume: bool = True  # False: a killed run's checkpoints are discarded, not resumed
    tensorboard: bool = False
    mlflow_uri: str | None = None  # each written record is also logged there
    progress: bool | None = None  # progress bars; None: when the terminal is interactive
    threads: int | None = None  # torch.set_num_threads for training; None: PyTorch's default

    def __post_init__(self) -> None:
        object.__setattr__(self, "results_dir", Path(self.results_dir))
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", Path(self.cache_dir).expanduser())
        for name in ("evaluators", "deploy"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ConfigError(f"{name} takes a list of names, e.g. [{value!r}], "
                                  "not a string")
            object.__setattr__(self, name, tuple(value))
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")

    @property
    def cache(self) -> Path:
        """The cache folder to use: the one given, else ``~/.cache/kdbench``."""
        from kdbench.benchmarks.teachers import default_cache_dir

        return self.cache_dir if self.cache_dir is not None else default_cache_dir()

    def replace(self, **changes: Any) -> RunOptions:
        return dataclasses.replace(self, **changes)

    @classmethod
    def of(cls, options: RunOptions | None = None, **changes: Any) -> RunOptions:
        """``options`` (default: the defaults) with ``changes``; an unknown name is an error
        that lists the known ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ConfigError(f"unknown run option(s) {', '.join(unknown)}; known: "
                              f"{', '.join(sorted(names))}")
        return dataclasses.replace(options or cls(), **changes)


def names(items: Sequence[str] | str | None) -> tuple[str, ...]:
    """``"a, b"`` or ``["a", "b"]`` as ``("a", "b")``; empty items dropped."""
    if items is None:
        return ()
    parts = items.split(",") if isinstance(items, str) else items
    return tuple(p.strip() for p in parts if p.strip())


# ---- the command line ---------------------------------------------------------------------
def add_run_options(parser: argparse.ArgumentParser, *, device: str = "cpu",
                    device_help: str = "cpu, cuda, cuda:N or auto") -> None:
    """Add the options of a run (what :func:`run_options_from` reads) to ``parser``;
    ``device``: the command's default device (``kdbench run``: cpu, ``kdbench sweep``: auto,
    resolved on each job's node)."""
    parser.add_argument("--suite", default="cifar100", help="suite name or config file")
    parser.add_argument("--methods", help="comma-separated method names (default: the "
                        "suite's default_methods, else every registered method)")
    parser.add_argument("--budget", default="smoke", choices=BUDGETS)
    parser.add_argument("--seeds", help="number of seeds (3) or a list (0,1,2; '2,' is seed 2 "
                        "alone); default: the budget's")
    parser.add_argument("--device", default=device, help=device_help)
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="teacher cache and generated data (default: ~/.cache/kdbench); "
                        "for a cluster sweep, a shared filesystem")
    parser.add_argument("--data-root", help="dataset root (overrides the suite's)")
    parser.add_argument("--no-download", action="store_true",
                        help="never try to download the dataset")
    parser.add_argument("--no-synthetic-fallback", action="store_true",
                        help="fail instead of running on generated data when no dataset is "
                        "found")
    parser.add_argument("--teacher-ckpt", action="append", default=[], metavar="ARCH=PATH",
                        help="use your own teacher state_dict for an architecture")
    parser.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE",
                        help="override a method's config key")
    parser.add_argument("--force", action="store_true", help="re-run runs that have a record")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="continue a killed run from its last epoch checkpoint (default); "
                        "--no-resume starts it over")
    parser.add_argument("--no-latency", action="store_true", help="skip latency measurement")
    parser.add_argument("--deploy", default="", metavar="TARGET[,TARGET]",
                        help="also measure every method deployed as TARGET: int8 (torchao "
                        "PT2E x86 quantization + torch.compile, timed against the compiled "
                        "fp32 teacher), onnx / onnx-int8 (ONNX Runtime CPU, fp32 or "
                        "statically quantized, timed against the teacher in ONNX Runtime); "
                        "adds to the suite budget's `deploy`")
    parser.add_argument("--evaluators", default="", metavar="NAME[,NAME]",
                        help="extra evaluators to run on every returned model besides the "
                        "suite's, e.g. robust (PGD-20 robust accuracy)")
    parser.add_argument("--tensorboard", action="store_true", help="write each run's "
                        "training curves as TensorBoard event files under its artifacts "
                        "folder")
    parser.add_argument("--mlflow", nargs="?", const=MLFLOW_DEFAULT_URI, metavar="URI",
                        help="also log each finished run to MLflow (params: the resolved "
                        "method config; metrics: the record's figures); default URI "
                        f"{MLFLOW_DEFAULT_URI}")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="training threads (torch.set_num_threads; default: PyTorch's; "
                        "local sweep jobs: the cores shared out among --max-parallel jobs)")


def run_options_from(args: argparse.Namespace, suite: SuiteConfig,
                     ) -> tuple[RunOptions, list[str] | None, list[int] | None]:
    """The options, methods (None: all) and seeds (None: the budget's) that ``args`` (parsed
    by a parser with :func:`add_run_options`) give for ``suite``; bad values fail here."""
    teacher_checkpoints = parse_assignments(args.teacher_ckpt, "--teacher-ckpt")
    teachers = {p.teacher for p in suite.budget(args.budget).pairs}
    unused = sorted(set(teacher_checkpoints) - teachers)
    if unused:
        raise ConfigError(f"--teacher-ckpt names {', '.join(unused)}, which no pair of suite "
                          f"{suite.name!r} ({args.budget} budget) uses as teacher; its "
                          f"teachers: {', '.join(sorted(teachers))}")
    methods, seeds = parse_methods(args.methods), parse_seeds(args.seeds)
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {args.threads}")
    options = RunOptions(
        results_dir=args.results_dir, cache_dir=args.cache_dir, device=args.device,
        dataset_overrides=dataset_overrides_from(args, suite),
        teacher_checkpoints=teacher_checkpoints,
        method_overrides=parse_method_overrides(args.set),
        measure_latency=not args.no_latency, evaluators=names(args.evaluators),
        deploy=names(args.deploy), force=args.force, resume=args.resume,
        tensorboard=args.tensorboard, mlflow_uri=args.mlflow, threads=args.threads)
    return options, methods, seeds


def parse_seeds(text: str | None) -> list[int] | None:
    """``3`` means seeds 0,1,2; ``0,4,7`` means exactly those (``2,`` is seed 2 alone)."""
    if text is None:
        return None
    try:
        if "," in text:
            seeds = [int(s) for s in text.split(",") if s.strip()]
            if not seeds or any(s < 0 for s in seeds):
                raise ValueError(text)
            return seeds
        n = int(text)
    except ValueError as exc:
        raise ConfigError(f"--seeds takes a count (3) or a list of seeds >= 0 (0,1,2; one "
                          f"seed: 2,), got {text!r}") from exc
    if n < 0:
        raise ConfigError(f"--seeds must be a count >= 1 or a list of seeds >= 0, got {n}")
    if n < 1:
        raise ConfigError(f"--seeds as a count must be at least 1, got {n}; to run seed {n} "
                          f"alone, give it as a list: --seeds {n},")
    return list(range(n))


def parse_methods(text: str | None) -> list[str] | None:
    """``kd,scratch`` -> ["kd", "scratch"]; None (not given) means every method, but a list
    with no names (``,``) is a mistake, not a request for everything."""
    if text is None:
        return None
    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods:
        raise ConfigError(f"--methods names no method ({text!r}); give names such as "
                          "kd,scratch, or leave the flag out to run every method")
    return methods


def parse_assignments(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ConfigError(f"{flag} takes KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def parse_method_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """``--set kd.temperature=2`` -> {"kd": {"temperature": 2}}."""
    overrides: dict[str, dict[str, Any]] = {}
    for key, raw in parse_assignments(items, "--set").items():
        method, dot, name = key.partition(".")
        if not dot:
            raise ConfigError(f"--set takes METHOD.KEY=VALUE, got {key!r}")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        overrides.setdefault(method, {})[name] = value
    return overrides


def dataset_overrides_from(args: argparse.Namespace, suite: SuiteConfig) -> dict[str, Any]:
    """The suite's dataset settings changed by --data-root/--no-download/--no-synthetic-fallback
    (the last two only where the suite's dataset has such a setting)."""
    overrides: dict[str, Any] = {}
    if args.data_root:
        from kdbench.benchmarks.registry import DATASETS, lookup

        kind = suite.dataset.get("type", "")
        if "root" not in inspect.signature(lookup(DATASETS, kind)).parameters:
            raise ConfigError(f"--data-root does not apply to suite {suite.name!r}: its dataset "
                              f"{kind!r} is not read from a folder; leave the flag out")
        overrides["root"] = args.data_root
    if args.no_download and "download" in suite.dataset:
        overrides["download"] = False
    if args.no_synthetic_fallback and "synthetic_fallback" in suite.dataset:
        overrides["synthetic_fallback"] = False
    return overrides
