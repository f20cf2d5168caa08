"""Suite configs (mmengine Python configs) validated into dataclasses.

A suite file in ``benchmarks/suites/`` names a dataset, and per budget (smoke / short /
full) the teacher-student pairs, the training recipe, the measurement settings and any
per-method overrides. Every mapping is checked against its dataclass so that a misspelt
key fails with a message naming it and listing the allowed keys.

A field states its allowed values in its type, and the checker enforces them:
``Literal["cosine", "linear"]`` for a choice, ``Annotated[float, Interval(gt=0, le=1)]``
(or ``Ge``/``Gt``/``Le``/``Lt``, from the ``annotated_types`` package) for a range. On a
list or tuple field the bounds hold for every item, ``MinLen``/``MaxLen`` bound its length
and ``Ascending`` its order. ``Positive``, ``Fraction``, ``Weight`` and ``Range`` below are
short forms. Only checks that relate several fields stay in a config's ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import itertools
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import annotated_types
from mmengine.config import Config

from kdbench.benchmarks.errors import ConfigError, UnknownNameError

if TYPE_CHECKING:
    import torch

SUITES_DIR = Path(__file__).parent / "suites"
BUDGETS = ("smoke", "short", "full")

T = TypeVar("T")


def from_mapping(cls: type[T], data: Mapping[str, Any] | None, where: str) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types are errors."""
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"in {where}; allowed keys: {', '.join(sorted(fields))}"
        )
    required = [name for name, f in fields.items() if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING and name not in data]
    if required:
        raise ConfigError(f"{where} lacks required key{'s' if len(required) > 1 else ''} "
                          f"{', '.join(map(repr, required))}")
    hints = typing.get_type_hints(cls, include_extras=True)
    kwargs = {name: _coerce(value, hints[name], f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # a value its own check refuses: say where it was set
        raise ConfigError(f"{where}: {exc}") from exc


def check_fields(instance: Any, where: str) -> None:
    """Check a dataclass built in code (not from a mapping) against its fields' types."""
    hints = typing.get_type_hints(type(instance), include_extras=True)
    for f in dataclasses.fields(instance):
        _coerce(getattr(instance, f.name), hints[f.name], f"{where}.{f.name}")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a (simple) type hint, converting where it is lossless."""
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        base, *metadata = typing.get_args(hint)
        value = _coerce(value, base, where)
        if isinstance(value, (list, tuple)):  # bounds hold for every item
            _check_length(value, metadata, where)
            for i, item in enumerate(value):
                _check_bounds(item, metadata, f"{where}[{i}]")
            _check_order(value, metadata, where)
        elif value is not None:
            _check_bounds(value, metadata, where)
        if any(isinstance(item, _RecipeKeys) for item in metadata):
            TrainRecipe().replace(**value, where=where)
        return value
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if value not in allowed or isinstance(value, bool) != isinstance(allowed[0], bool):
            raise ConfigError(f"{where} must be one of {', '.join(map(str, allowed))}; "
                              f"got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return from_mapping(hint, value, where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        args = typing.get_args(hint)
        if origin is tuple and args and args[-1] is not Ellipsis:  # fixed length: per position
            if len(value) != len(args):
                raise ConfigError(f"{where} must have {len(args)} items; got {value!r}")
            items = [_coerce(v, a, f"{where}[{i}]")
                     for i, (v, a) in enumerate(zip(value, args, strict=True))]
            return tuple(items)
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not (
        isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{where} must be {hint.__name__}, got {value!r}")
    return value


def _check_bounds(value: Any, metadata: list[Any], where: str) -> None:
    """Enforce ``annotated_types`` bounds (Gt, Ge, Lt, Le, Interval) on a number."""
    bounds: dict[str, Any] = {}
    for item in metadata:
        for bound in item if isinstance(item, annotated_types.GroupedMetadata) else [item]:
            for key in ("gt", "ge", "lt", "le"):
                if hasattr(bound, key):
                    bounds[key] = getattr(bound, key)
    low, high = bounds.get("gt", bounds.get("ge")), bounds.get("lt", bounds.get("le"))
    if (("gt" not in bounds or value > bounds["gt"])
            and ("ge" not in bounds or value >= bounds["ge"])
            and ("lt" not in bounds or value < bounds["lt"])
            and ("le" not in bounds or value <= bounds["le"])):
        return
    if low is not None and high is not None:
        wanted = (f"in {'(' if 'gt' in bounds else '['}{low}, {high}"
                  f"{')' if 'lt' in bounds else ']'}")
    elif low is not None:
        wanted = f"{'>' if 'gt' in bounds else '>='} {low}"
    else:
        wanted = f"{'<' if 'lt' in bounds else '<='} {high}"
    raise ConfigError(f"{where} must be {wanted}; got {value!r}")


def _check_length(value: Sequence[Any], metadata: list[Any], where: str) -> None:
    """Enforce ``annotated_types`` ``MinLen``/``MaxLen``/``Len`` on a list or tuple."""
    low, high = 0, None
    for item in metadata:
        for bound in item if isinstance(item, annotated_types.GroupedMetadata) else [item]:
            low = max(low, getattr(bound, "min_length", 0) or 0)
            high = getattr(bound, "max_length", high)
    if len(value) < low:
        raise ConfigError(f"{where} must have at least {low} items; got {value!r}")
    if high is not None and len(value) > high:
        raise ConfigError(f"{where} must have at most {high} items; got {value!r}")


@dataclass(frozen=True)
class Ascending:
    """Marks a list or tuple field whose items must be in ascending order (``strict``: each
    greater than the one before), e.g. ``Annotated[tuple[float, ...], Ascending(strict=True)]``."""

    strict: bool = False


def _check_order(value: Sequence[Any], metadata: list[Any], where: str) -> None:
    for order in (m for m in metadata if isinstance(m, Ascending)):
        if any(b < a or (order.strict and b == a) for a, b in itertools.pairwise(value)):
            raise ConfigError(f"{where} must be {'strictly ' if order.strict else ''}"
                              f"ascending; got {value!r}")


# Short forms of common declarations.
Positive = Annotated[int, annotated_types.Ge(1)]  # a count: 1 or more
Fraction = Annotated[float, annotated_types.Interval(gt=0, le=1)]  # a share of a whole
Weight = Annotated[float, annotated_types.Interval(ge=0, le=1)]  # a mixing weight
# (low, high) with low <= high; bounds on the field apply to both ends.
Range = Annotated[tuple[float, float], Ascending()]


@dataclass(frozen=True)
class TrainRecipe:
    """One training schedule (the shared loop's settings)."""

    epochs: int = 240
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "multistep"  # multistep | cosine
    milestones: tuple[int, ...] = (150, 180, 210)
    gamma: float = 0.1
    warmup_epochs: int = 0
    amp: bool = True  # bf16 autocast, CUDA only
    channels_last: bool = True  # on CUDA; on CPU only with cpu_channels_last
    # channels_last on CPU too: 1.2-1.5x faster training of the small CIFAR ResNets on x86
    # (`nox -s perf`), but other kernels, so off by default to keep CPU results as they were.
    cpu_channels_last: bool = False
    eval_batch_size: int = 256
    log_every: int = 50  # steps between loss checks / progress updates

    def __post_init__(self) -> None:
        if self.schedule not in ("multistep", "cosine"):
            raise ConfigError(f"schedule must be 'multistep' or 'cosine', got {self.schedule!r}")
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be a positive integer, got {getattr(self, key)}")

    def channels_last_on(self, device: torch.device) -> bool:
        """Whether the loop trains (and the loaders feed) channels_last on ``device``."""
        return self.channels_last and (device.type == "cuda" or self.cpu_channels_last)

    def replace(self, where: str = "recipe", **changes: Any) -> TrainRecipe:
        return from_mapping(TrainRecipe, {**dataclasses.asdict(self), **changes}, where)


@dataclass(frozen=True)
class _RecipeKeys:
    """Marks a config field of changes to the budget's ``TrainRecipe`` (checked on load)."""


# A method config field of changes to the budget's training recipe, e.g. its paper's own
# schedule (``field(default_factory=SCHEDULE.default)`` with a ``benchmarks.method.
# PaperSchedule``); ``{}`` trains with the suite's, as the rows it is compared with. Keys and
# values are checked when loaded.
RecipeChanges = Annotated[dict[str, Any], _RecipeKeys()]


@dataclass(frozen=True)
class LatencyConfig:
    """How the harness times the returned model against its teacher."""

    enabled: bool = True
    batch_sizes: tuple[int, ...] = (1, 64)
    rounds: int = 10
    warmup: int = 10
    min_iters: int = 5
    max_iters: int = 200
    target_round_s: float = 0.25
    cuda: bool = True  # also time on CUDA when a GPU is present


@dataclass(frozen=True)
class Resources:
    """What one sweep job (one method x pair x seed) asks a cluster for (``kdbench sweep``).

    ``tasks_per_node`` > 1 trains each run with DDP over that many processes per node
    (usually one per GPU); ``slurm_extra`` passes further sbatch options (account, qos,
    constraint, ...) through submitit as they are.
    """

    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 1
    cpus_per_task: int = 8
    mem_gb: float = 32.0
    timeout_min: int = 24 * 60
    partition: str = ""  # empty: the cluster's default partition
    array_parallelism: int = 64  # most jobs of the array running at once
    slurm_extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("nodes", "tasks_per_node", "cpus_per_task", "timeout_min",
                     "array_parallelism"):
            if getattr(self, name) < 1:
                raise ConfigError(f"resources.{name} must be >= 1, got {getattr(self, name)}")
        if self.gpus_per_node < 0 or self.mem_gb <= 0:
            raise ConfigError(f"resources need gpus_per_node >= 0 and mem_gb > 0; got "
                              f"gpus_per_node={self.gpus_per_node}, mem_gb={self.mem_gb}")


@dataclass(frozen=True)
class Pair:
    teacher: str
    student: str

    @property
    def label(self) -> str:
        return f"{self.teacher}->{self.student}"


@dataclass(frozen=True)
class Budget:
    """Everything that differs between smoke, short and full."""

    name: str
    pairs: tuple[Pair, ...]
    train: TrainRecipe = field(default_factory=TrainRecipe)
    teacher_train: TrainRecipe | None = None  # None: same recipe as the students
    # None: every student seed has its own teacher, trained with that seed. A number: one
    # teacher per pair, trained with this seed and shared by all student seeds (the record
    # says which teacher seed a run used).
    teacher_seed: int | None = None
    train_subset: int | None = None  # class-balanced subset of the train split
    test_subset: int | None = None
    seeds: int = 1  # default number of seeds when the CLI gives none
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Overrides of the suite's dataset section for this budget (e.g. a smaller input size).
    dataset: dict[str, Any] = field(default_factory=dict)
    # Per-evaluator settings for this budget (over the suite's), e.g. robust=dict(n_images=200).
    evaluator_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Names of the suite's variants run by default in this budget (others only when named).
    variants: tuple[str, ...] = ()
    # Deployments measured besides the eager fp32 model, e.g. ("int8",) (see benchmarks/deploy.py).
    deploy: tuple[str, ...] = ()
    # Per-job cluster resources for `kdbench sweep --executor slurm`.
    resources: Resources = field(default_factory=Resources)

    @property
    def teacher_recipe(self) -> TrainRecipe:
        return self.teacher_train or self.train

    def teacher_seed_for(self, seed: int) -> int:
        """The seed of the teacher that the student run with ``seed`` distils from."""
        return seed if self.teacher_seed is None else self.teacher_seed


@dataclass(frozen=True)
class Variant:
    """A named configuration of a registered method, run as a leaderboard row of its own
    (e.g. one point of a hyper-parameter sweep): ``config`` overrides the method's config."""

    method: str
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RegressGate:
    """A suite's part in the regression gate (``kdbench regress``, ``nox -s regress``): the
    suites that have this section are the gated ones, compared with their smoke baselines."""

    # The methods the gate runs and compares; None: those the suite runs by default.
    methods: tuple[str, ...] | None = None
    # Overrides of the suite's dataset section for the gate's runs. ``{cache_dir}`` in a
    # string stands for the gate's cache folder (e.g. a root where no real data lies).
    dataset: dict[str, Any] = field(default_factory=dict)
    # Also write the claims table of the gate's smoke runs (a report, not a gate).
    claims: bool = False


@dataclass(frozen=True)
class SuiteConfig:
    name: str
    dataset: dict[str, Any]
    budgets: dict[str, Budget]
    description: str = ""
    metric: str = "top1"  # the headline metric (a key produced by one of the evaluators)
    evaluators: tuple[str, ...] = ("classification",)  # run on every returned model
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)  # overrides, all budgets
    teacher_checkpoints: dict[str, str] = field(default_factory=dict)  # arch -> state_dict path
    input_size: int = 32
    # The model method the harness measures (params, MACs, latency) as the deployed network:
    # "forward", or e.g. "embed" for ReID, which deploys the features without the ID classifier.
    deployed_forward: str = "forward"
    table_metrics: tuple[str, ...] = ()  # further metrics shown in the terminal table (mAP, ...)
    evaluator_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per evaluator
    variants: dict[str, Variant] = field(default_factory=dict)  # name -> method + config
    # Task packages to import before the suite's models, datasets and evaluators are looked
    # up (they register them on import), e.g. ("kdbench.reid",).
    imports: tuple[str, ...] = ()
    # The methods (or variants) run when none are named; () runs every registered method
    # and the budget's variants.
    default_methods: tuple[str, ...] = ()
    # Its part in the regression gate; None: not gated.
    regress: RegressGate | None = None

    def budget(self, name: str) -> Budget:
        if name not in self.budgets:
            raise UnknownNameError("budget", name, self.budgets)
        return self.budgets[name]


def known_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.py") if not p.stem.startswith("_"))


def load_suite(name_or_path: str) -> SuiteConfig:
    """Load a suite by name (``cifar100``) or from a config file path."""
    path = Path(name_or_path)
    if path.suffix != ".py":
        if name_or_path not in known_suites():
            raise UnknownNameError("suite", name_or_path, known_suites())
        path = SUITES_DIR / f"{name_or_path}.py"
    elif not path.is_file():
        raise ConfigError(f"suite config {path} does not exist")
    suite = suite_from_dict(raw_suite(path), where=str(path))
    from kdbench.benchmarks.registry import import_task_packages

    import_task_packages(suite.imports, where=f"{path} (imports)")
    return suite


def raw_suite(path: Path) -> dict[str, Any]:
    """A suite file's settings as a plain dict (its ``_base_`` files merged in)."""
    try:
        return Config.fromfile(str(path)).to_dict()
    except SyntaxError as exc:
        raise ConfigError(f"suite file {path} is not valid Python: {exc.msg} (line {exc.lineno})"
                          ) from exc


def suite_from_dict(raw: Mapping[str, Any], where: str = "suite") -> SuiteConfig:
    # Names starting with "_" are the config file's own helper variables.
    raw = {k: v for k, v in raw.items() if not k.startswith("_")}
    budgets = {}
    for budget_name, spec in dict(raw.pop("budgets", {})).items():
        if budget_name not in BUDGETS:
            raise ConfigError(
                f"unknown budget {budget_name!r} in {where}; allowed: {', '.join(BUDGETS)}"
            )
        spec = dict(spec)
        where_pairs = f"{where}.budgets.{budget_name}.pairs"
        spec["pairs"] = [_pair(p, where_pairs) for p in spec.get("pairs", [])]
        budgets[budget_name] = from_mapping(
            Budget, {"name": budget_name, **spec}, f"{where}.budgets.{budget_name}"
        )
    variants = {name: from_mapping(Variant, spec, f"{where}.variants.{name}")
                for name, spec in dict(raw.pop("variants", {})).items()}
    for budget in budgets.values():
        missing = sorted(set(budget.variants) - set(variants))
        if missing:
            raise ConfigError(f"{where}.budgets.{budget.name}.variants names undefined "
                              f"variant(s) {', '.join(missing)}; defined: "
                              f"{', '.join(sorted(variants)) or 'none'}")
    return from_mapping(SuiteConfig, {**raw, "budgets": budgets, "variants": variants}, where)


def _pair(value: Any, where: str) -> Pair:
    if isinstance(value, Mapping):
        return from_mapping(Pair, value, where)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return Pair(teacher=str(value[0]), student=str(value[1]))
    raise ConfigError(f"{where}: a pair is (teacher, student) or dict(teacher=..., student=...)")
