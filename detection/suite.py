"""Detection suites: mmengine Python configs in ``detection/suites/``, validated into dataclasses.

A suite names its dataset (real COCO or the synthetic set), the input size at which the
exported detector is measured, and per budget the three mmdet configs the benchmark trains:
the teacher, the student alone (``scratch``) and ``ctkd``. Misspelt keys are errors that list
the allowed ones, as for the classification suites.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmengine.config import Config

from benchmarks.claims import Claim
from benchmarks.config import BUDGETS, LatencyConfig, from_mapping
from benchmarks.errors import ConfigError, UnknownNameError

SUITES_DIR = Path(__file__).parent / "suites"
CONFIGS_DIR = Path(__file__).parent / "configs"
METHODS = ("teacher", "scratch", "ctkd")  # the rows a detection suite produces
# ctkd is trained by mmengine's Runner, not a ``Method``: its paper claims are declared here
# (detection/ctkd.py needs mmdet; ``kdbench claims`` must not). Gao et al. (Trans. Inst. Meas.
# Control 43(13):2888-2898, 2021) give no figures in their abstract, the only part used: it
# claims that the adapted KD improves the light-weight keypoint detector.
DETECTION_CLAIMS: dict[str, tuple[Claim, ...]] = {"ctkd": (
    Claim("ctkd", "scratch", "mAP",
          text="distillation from the CenterNet teacher beats the same student detector "
               "trained alone"),
)}


@dataclass(frozen=True)
class DetectionBudget:
    """One budget: architecture labels for the board and the mmdet config of each row."""

    name: str
    teacher: str  # label of the teacher architecture (the board's "teacher" column)
    student: str
    teacher_config: str  # mmdet configs, relative to detection/configs
    student_config: str
    ctkd_config: str
    seeds: int = 1
    latency: LatencyConfig = field(default_factory=LatencyConfig)

    def config_for(self, method: str) -> Path:
        """The mmdet config that trains ``method``'s model."""
        relative = {"teacher": self.teacher_config, "scratch": self.student_config,
                    "ctkd": self.ctkd_config}[method]
        return CONFIGS_DIR / relative


@dataclass(frozen=True)
class DetectionSuite:
    name: str
    dataset: dict[str, Any]
    budgets: dict[str, DetectionBudget]
    input_size: tuple[int, int]  # (H, W) of the image tensor for MACs and latency
    description: str = ""
    metric: str = "mAP"

    def budget(self, name: str) -> DetectionBudget:
        if name not in self.budgets:
            raise UnknownNameError("budget", name, self.budgets)
        return self.budgets[name]


def known_detection_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.py") if not p.stem.startswith("_"))


def load_detection_suite(name_or_path: str) -> DetectionSuite:
    """Load a detection suite by name (``synthetic-coco``) or from a config file path."""
    path = Path(name_or_path)
    if path.suffix != ".py":
        if name_or_path not in known_detection_suites():
            raise UnknownNameError("detection suite", name_or_path, known_detection_suites())
        path = SUITES_DIR / f"{name_or_path}.py"
    elif not path.is_file():
        raise ConfigError(f"detection suite config {path} does not exist")
    raw = {k: v for k, v in Config.fromfile(str(path)).to_dict().items()
           if not k.startswith("_")}
    where = str(path)
    budgets = {}
    for name, spec in dict(raw.pop("budgets", {})).items():
        if name not in BUDGETS:
            raise ConfigError(f"unknown budget {name!r} in {where}; allowed: {', '.join(BUDGETS)}")
        budget = from_mapping(DetectionBudget, {"name": name, **spec}, f"{where}.budgets.{name}")
        for method in METHODS:
            if not budget.config_for(method).is_file():
                raise ConfigError(f"{where}.budgets.{name}: the {method} config "
                                  f"{budget.config_for(method)} does not exist")
        budgets[name] = budget
    return from_mapping(DetectionSuite, {**raw, "budgets": budgets}, where)
