"""``ctkd``: keypoint-based detector distillation (after Gao et al. 2021) as an mmdet detector.

Gao et al., Transactions of the Institute of Measurement and Control 43(13):2888-2898, 2021;
its abstract is the part used (the claim is declared in ``detection/suite.py``). README.md,
"Detection: CenterNet KD on mmdet (`detection/`)", describes the benchmark.

``CenterNetKD`` is mmdet's ``CenterNet`` (the student) plus a frozen teacher CenterNet. Its
``loss`` adds four terms to the student's own ground-truth losses:

* heatmap KD with **positive sample retaining**: Gaussian focal loss of the student's heatmap
  against max(sigmoid(teacher/tau), ground-truth Gaussian), so object centres stay positives
  (``heatmap="kl"``: the binary-KL ablation instead);
* **early distribution softening**: tau falls linearly from ``tau0`` to 1 over the first
  ``soften_fraction`` of training (``DistillProgressHook`` reports the progress and logs tau).
  By default (``soften="target"``) tau softens the teacher's map only and the student is
  scored at tau 1; ``soften="both"`` tempers the student's logits too. Under focal loss that
  makes every background cell count more while tau > 1 (sigmoid(l/tau) stays larger), and on
  the smoke set it pushed the student's heatmap to background (README.md, "What the smoke
  set taught about the method", under "Installing mmdet: mmcv with compiled ops");
* size and offset response KD: L1 to the teacher's maps on the ground-truth centre cells;
* a **hint** on the stride-4 neck output, through a 1x1 conv + BN adapter when widths differ.

The teacher is kept outside the module tree: it never reaches ``state_dict`` (checkpoints),
``parameters()`` (the optimizer), ``train()`` or ``init_weights()``, and stays in eval mode with
no gradients. ``export_student()`` returns the plain ``CenterNet`` that is evaluated and measured.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from mmdet.models.detectors import CenterNet
from mmdet.models.utils import unpack_gt_instances
from mmdet.registry import HOOKS, MODELS
from mmdet.structures import SampleList
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from torch import Tensor, nn

from kdbench.benchmarks.claims import Claim
from kdbench.benchmarks.config import Pair, from_mapping
from kdbench.benchmarks.errors import ConfigError
from kdbench.benchmarks.method import Compressed, FrozenTeacher, Method, RunContext
from kdbench.benchmarks.registry import METHODS
from kdbench.benchmarks.teachers import load_state_dict
from kdbench.detection.losses import (
    align_to,
    heatmap_focal_kd,
    heatmap_kd_target,
    heatmap_kl_kd,
    hint_loss,
    response_kd,
    softening_temperature,
)

KD_KEYS = ("teacher", "teacher_ckpt", "distill")  # CenterNetKD's keys on top of CenterNet's
HEATMAP_KD = ("focal", "kl")
SOFTEN = ("target", "both")


@dataclass(frozen=True)
class DistillConfig:
    """The ``distill`` keys of a ``CenterNetKD`` config; defaults mirror the GT-loss weights."""

    heatmap: str = "focal"  # focal (positive-retaining focal KD) | kl (binary-KL ablation)
    retain_positives: bool = True
    tau0: float = 2.0  # initial temperature of early distribution softening
    soften: str = "target"  # focal heatmap KD: temper the teacher's map only, or the student's too
    soften_fraction: float = 1 / 3  # share of training over which tau reaches 1
    lambda_heatmap: float = 1.0
    lambda_wh: float = 0.1
    lambda_offset: float = 1.0
    lambda_hint: float = 1.0

    def __post_init__(self) -> None:
        if self.heatmap not in HEATMAP_KD:
            raise ConfigError(f"distill.heatmap must be one of {', '.join(HEATMAP_KD)}; "
                              f"got {self.heatmap!r}")
        if self.soften not in SOFTEN:
            raise ConfigError(f"distill.soften must be one of {', '.join(SOFTEN)}; "
                              f"got {self.soften!r}")
        weights = {k: v for k, v in asdict(self).items() if k.startswith("lambda_")}
        negative = [k for k, v in weights.items() if v < 0]
        if negative:
            raise ConfigError(f"distill weights must be >= 0; negative: {', '.join(negative)}")
        softening_temperature(0.0, self.tau0, self.soften_fraction)  # validates both


@dataclass(frozen=True)
class HeadMaps:
    """One CenterNet's stride-4 outputs: neck feature, heatmap logits, size and offset maps."""

    feature: Tensor
    heatmap_logits: Tensor
    wh: Tensor
    offset: Tensor


def student_model_config(kd_config: dict[str, Any]) -> dict[str, Any]:
    """The plain ``CenterNet`` config of a ``CenterNetKD`` config's student."""
    config = {k: copy.deepcopy(v) for k, v in kd_config.items() if k not in KD_KEYS}
    config["type"] = "CenterNet"
    return config


def head_maps(detector: CenterNet, images: Tensor) -> HeadMaps:
    """Neck feature and the three head outputs, heatmap as logits (the head applies sigmoid)."""
    feature = detector.extract_feat(images)[0]
    head = detector.bbox_head
    return HeadMaps(feature, head.heatmap_head(feature), head.wh_head(feature),
                    head.offset_head(feature))


def hint_adapter(student_width: int, teacher_width: int) -> nn.Module:
    """Maps the student's neck feature to the teacher's width (identity when equal)."""
    if student_width == teacher_width:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(student_width, teacher_width, kernel_size=1, bias=False),
                         nn.BatchNorm2d(teacher_width))


def _neck_width(detector: CenterNet) -> int:
    return detector.bbox_head.heatmap_head[0].in_channels


@MODELS.register_module()
class CenterNetKD(CenterNet):
    """Student CenterNet distilled from a frozen teacher CenterNet (see the module docstring).

    ``teacher`` is a CenterNet model config; ``teacher_ckpt`` its weights (a state_dict or an
    mmengine checkpoint, read with ``weights_only=True``; None keeps it untrained, for tests);
    ``distill`` the ``DistillConfig`` keys. Everything else is the student's CenterNet config.
    """

    def __init__(self, backbone: dict, neck: dict, bbox_head: dict, teacher: dict,
                 teacher_ckpt: str | None = None, distill: dict | None = None,
                 train_cfg: dict | None = None, test_cfg: dict | None = None,
                 data_preprocessor: dict | None = None, init_cfg: dict | None = None) -> None:
        super().__init__(backbone=backbone, neck=neck, bbox_head=bbox_head, train_cfg=train_cfg,
                         test_cfg=test_cfg, data_preprocessor=data_preprocessor,
                         init_cfg=init_cfg)
        self.distill_cfg: DistillConfig = from_mapping(DistillConfig, distill, "model.distill")
        self.student_cfg = student_model_config(dict(
            backbone=backbone, neck=neck, bbox_head=bbox_head, train_cfg=train_cfg,
            test_cfg=test_cfg, data_preprocessor=data_preprocessor, init_cfg=init_cfg))
        frozen = FrozenTeacher(self._build_teacher(teacher, teacher_ckpt))
        object.__setattr__(self, "teacher", frozen)  # not a submodule: see the module docstring
        self.hint_adapter = hint_adapter(_neck_width(self), _neck_width(frozen.model))
        self.kd_progress: float | None = None  # set by DistillProgressHook
        self.tau_log: list[tuple[int, float]] = []  # (epoch, tau) as logged by the hook

    @staticmethod
    def _build_teacher(config: dict, checkpoint: str | None) -> CenterNet:
        if config.get("type") != "CenterNet":
            raise ConfigError(f"model.teacher must be a CenterNet config (type='CenterNet'); got "
                              f"type={config.get('type')!r}")
        teacher = MODELS.build(config)
        if checkpoint is None:
            print_log("CenterNetKD: teacher_ckpt is None, distilling from an untrained teacher",
                      logger="current", level=logging.WARNING)
        else:
            load_state_dict(teacher, Path(checkpoint), "teacher CenterNet")
        return teacher

    def _apply(self, fn: Any, recurse: bool = True) -> CenterNetKD:
        # .to()/.cuda()/.half() reach the teacher too, although it is not a submodule
        super()._apply(fn, recurse)
        self.teacher._apply(fn, recurse)
        return self

    @property
    def temperature(self) -> float:
        """Current tau of early distribution softening (tau0 before training starts)."""
        cfg = self.distill_cfg
        return softening_temperature(self.kd_progress or 0.0, cfg.tau0, cfg.soften_fraction)

    def loss(self, batch_inputs: Tensor, batch_data_samples: SampleList) -> dict[str, Tensor]:
        """The student's ground-truth losses plus the ``loss_kd_*`` terms (and ``kd_tau``)."""
        gts, _, metas = unpack_gt_instances(batch_data_samples)
        student = head_maps(self, batch_inputs)
        losses = self.bbox_head.loss_by_feat(
            [student.heatmap_logits.sigmoid()], [student.wh], [student.offset], gts, metas)
        with torch.no_grad():  # same preprocessed batch, so normalisation matches
            teacher = head_maps(self.teacher.model, batch_inputs)
        targets, avg_factor = self.bbox_head.get_targets(
            [g.bboxes for g in gts], [g.labels for g in gts], student.heatmap_logits.shape,
            metas[0]["batch_input_shape"])
        losses.update(self.distill_losses(student, teacher, targets, float(avg_factor)))
        return losses

    def distill_losses(self, student: HeadMaps, teacher: HeadMaps, targets: dict[str, Tensor],
                       avg_factor: float) -> dict[str, Tensor]:
        """The four weighted KD terms given both networks' maps and mmdet's targets."""
        if self.kd_progress is None and self.training:
            print_log("CenterNetKD: no DistillProgressHook in custom_hooks, so tau stays at tau0",
                      logger="current", level=logging.WARNING)
            self.kd_progress = 0.0
        cfg, tau = self.distill_cfg, self.temperature
        gt_heatmap = targets["center_heatmap_target"]
        t_logits = align_to(teacher.heatmap_logits, student.heatmap_logits)
        if cfg.heatmap == "focal":
            kd_target = heatmap_kd_target(t_logits, gt_heatmap, tau, cfg.retain_positives)
            student_tau = tau if cfg.soften == "both" else 1.0
            heatmap = heatmap_focal_kd(student.heatmap_logits, kd_target, student_tau,
                                       avg_factor)
        else:
            heatmap = heatmap_kl_kd(student.heatmap_logits, t_logits, gt_heatmap, tau, avg_factor)
        centres = targets["wh_offset_target_weight"]
        wh = response_kd(student.wh, align_to(teacher.wh, student.wh), centres, 2 * avg_factor)
        offset = response_kd(student.offset, align_to(teacher.offset, student.offset), centres,
                             2 * avg_factor)
        adapted = self.hint_adapter(student.feature)
        hint = hint_loss(adapted, align_to(teacher.feature, adapted))
        return {
            "loss_kd_heatmap": cfg.lambda_heatmap * heatmap,
            "loss_kd_wh": cfg.lambda_wh * wh,
            "loss_kd_offset": cfg.lambda_offset * offset,
            "loss_kd_hint": cfg.lambda_hint * hint,
            "kd_tau": gt_heatmap.new_tensor(tau),  # logged; not summed (no "loss" in the key)
        }

    def export_student(self) -> CenterNet:
        """The trained student as a plain mmdet ``CenterNet`` (no teacher, no adapter)."""
        student = MODELS.build(copy.deepcopy(self.student_cfg))
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("hint_adapter.")}
        student.load_state_dict(state, strict=True)
        return student.to(next(self.parameters()).device).eval()


@HOOKS.register_module()
class DistillProgressHook(Hook):
    """Feeds training progress (iteration / max iterations) to ``CenterNetKD``'s tau schedule
    and logs tau once per epoch."""

    def before_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
        _kd_model(runner).kd_progress = runner.iter / max(1, runner.max_iters)

    def after_train_epoch(self, runner: Any) -> None:
        model = _kd_model(runner)
        tau = model.temperature
        epoch = runner.epoch + 1  # the loop counts from 0 and increments after this hook
        model.tau_log.append((epoch, tau))
        runner.logger.info(f"ctkd: epoch {epoch} ended with temperature tau={tau:.4f}")


def _kd_model(runner: Any) -> CenterNetKD:
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    if not isinstance(model, CenterNetKD):
        raise ConfigError(f"DistillProgressHook needs a CenterNetKD model; the runner has "
                          f"{type(model).__name__}")
    return model


@METHODS.register_module("ctkd")
class CTKD(Method):
    """The student detector distilled from the cached teacher with ``CenterNetKD``, trained
    by mmengine's Runner on its mmdet config; returns the exported plain student CenterNet."""

    label = "after Gao et al. 2021"
    # Gao et al. (Trans. Inst. Meas. Control 43(13):2888-2898, 2021) give no figures in their
    # abstract, the only part used: it claims that the adapted KD improves the light-weight
    # keypoint detector.
    claims = (
        Claim("ctkd", "scratch", "mAP",
              text="distillation from the CenterNet teacher beats the same student detector "
                   "trained alone"),
    )

    @dataclass
    class Config:
        # The CenterNetKD mmdet config (relative to detection/configs, or a path); its
        # student and teacher must be the pair's models.
        config: str = "smoke/ctkd.py"
        # Overrides of that config's keys, as mmdet's --cfg-options (model.distill.tau0=1.0)
        cfg_options: dict[str, Any] = field(default_factory=dict)

    budget_defaults: ClassVar[dict[str, dict[str, Any]]] = {"full": {"config": "full/ctkd.py"}}

    def supports(self, pair: Pair) -> str | None:
        from kdbench.detection.models import mmdet_config

        missing = [arch for arch in (pair.teacher, pair.student) if mmdet_config(arch) is None]
        if missing:
            return f"{', '.join(missing)} not an mmdet detector (ctkd distils detectors)"
        return None

    def run(self, ctx: RunContext) -> Compressed:
        from kdbench.detection.mmdet_runner import train
        from kdbench.detection.models import Detector, config_path

        teacher = ctx.teacher().model
        weights = ctx.workdir / "teacher.pt"  # CenterNetKD loads its teacher from a file
        torch.save(teacher.detector.state_dict(), weights)
        path = config_path(self.cfg.config)
        cfg = ctx.data.config(path, work_dir=ctx.workdir / "mmdet", seed=ctx.seed,
                              options=self.cfg.cfg_options)
        cfg.model.teacher_ckpt = str(weights)
        kd_model = train(cfg)
        if not isinstance(kd_model, CenterNetKD):
            raise ConfigError(f"{path} must build a CenterNetKD model, not "
                              f"{type(kd_model).__name__}")
        student = Detector(kd_model.export_student(), path, self.cfg.cfg_options)
        return Compressed(model=student, extras={
            "mmdet_config": str(path), "distill": asdict(kd_model.distill_cfg),
            "tau_per_epoch": [tau for _, tau in kd_model.tau_log]})
