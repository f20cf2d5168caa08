"""The ctkd method: positive retaining, zero KD at equality, frozen teacher, tau schedule,
and the CenterNetKD model's contract (config keys, export, checkpoints)."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from detection_support import batch, build, smoke_config, synthetic_data
from mmengine.config import Config

from kdbench.benchmarks.errors import ConfigError
from kdbench.detection.ctkd import CenterNetKD, DistillConfig, HeadMaps
from kdbench.detection.losses import heatmap_focal_kd, heatmap_kd_target, softening_temperature
from kdbench.detection.models import CONFIGS_DIR


@pytest.fixture
def data(synthetic_coco, tmp_path):
    return synthetic_data(synthetic_coco, tmp_path)


def _kd_config(data, tmp_path, **distill):
    cfg = smoke_config("ctkd", data, tmp_path)
    cfg.model.distill.update(distill)
    return cfg


def _self_distilled(cfg, tmp_path) -> CenterNetKD:
    """A CenterNetKD whose teacher is an exact copy of its student."""
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.teacher = {k: v for k, v in model_cfg.items()
                         if k not in ("teacher", "teacher_ckpt", "distill")}
    model_cfg.teacher["type"] = "CenterNet"
    student = build(model_cfg.teacher)
    path = tmp_path / "student.pt"
    torch.save(student.state_dict(), path)
    model_cfg.teacher_ckpt = str(path)
    kd = build(model_cfg)
    kd.load_state_dict(student.state_dict(), strict=False)  # the adapter is an identity here
    return kd


def _gt_heatmap(kd: CenterNetKD, samples, inputs):
    gts = [s.gt_instances for s in samples]
    shape = (len(samples), kd.bbox_head.num_classes, inputs.shape[2] // 4, inputs.shape[3] // 4)
    return kd.bbox_head.get_targets([g.bboxes for g in gts], [g.labels for g in gts], shape,
                                    samples[0].metainfo["batch_input_shape"])


def test_positive_retaining_gives_exactly_n_object_ones_and_none_without(data, tmp_path):
    cfg = _kd_config(data, tmp_path)
    kd = build(cfg.model)
    inputs, samples = batch(cfg, kd, n=4)
    targets, avg_factor = _gt_heatmap(kd, samples, inputs)
    gt_heatmap = targets["center_heatmap_target"]
    n_objects = sum(len(s.gt_instances) for s in samples)
    assert int(avg_factor) == n_objects  # synthetic boxes never share a cell
    # A very confident teacher (logit 40) would be exactly 1.0 in float32 without the clamp.
    teacher_logits = torch.randn_like(gt_heatmap) * 10
    teacher_logits[0, 0, :2, :2] = 40.0
    for tau in (1.0, 2.0):
        retained = heatmap_kd_target(teacher_logits, gt_heatmap, tau, retain_positives=True)
        assert int(retained.eq(1).sum()) == n_objects
        assert torch.equal(retained.eq(1), gt_heatmap.eq(1))
        plain = heatmap_kd_target(teacher_logits, gt_heatmap, tau, retain_positives=False)
        assert int(plain.eq(1).sum()) == 0


def test_kd_losses_vanish_when_student_equals_teacher(data, tmp_path):
    cfg = _kd_config(data, tmp_path)
    kd = _self_distilled(cfg, tmp_path).eval()  # eval: both use BN running statistics
    assert isinstance(kd.hint_adapter, torch.nn.Identity)
    inputs, samples = batch(cfg, kd, n=2)
    with torch.no_grad():
        focal = kd.loss(inputs, samples)
    for term in ("loss_kd_hint", "loss_kd_wh", "loss_kd_offset"):
        assert focal[term].item() == 0.0, term
    assert focal["loss_kd_heatmap"].item() > 0  # focal loss is not a divergence
    kd_kl = _self_distilled(_kd_config(data, tmp_path, heatmap="kl"), tmp_path).eval()
    with torch.no_grad():
        kl = kd_kl.loss(inputs, samples)
    assert kl["loss_kd_heatmap"].item() == 0.0


def test_soften_target_tempers_only_the_teacher_map_and_both_the_student_too(data, tmp_path):
    cfg = _kd_config(data, tmp_path, tau0=3.0)
    kd = build(cfg.model).eval()
    inputs, samples = batch(cfg, kd, n=2)
    targets, avg_factor = _gt_heatmap(kd, samples, inputs)
    torch.manual_seed(0)

    def maps(width: int) -> HeadMaps:  # neck feature, heatmap logits, size, offset
        return HeadMaps(torch.randn(2, width, 32, 32), torch.randn(2, 2, 32, 32) * 3,
                        torch.rand(2, 2, 32, 32), torch.rand(2, 2, 32, 32))

    student, teacher = maps(16), maps(32)
    kd.kd_progress = 0.0  # tau = tau0 = 3
    soft_target = heatmap_kd_target(teacher.heatmap_logits, targets["center_heatmap_target"],
                                    3.0)
    loss = kd.distill_losses(student, teacher, targets, float(avg_factor))["loss_kd_heatmap"]
    expected = heatmap_focal_kd(student.heatmap_logits, soft_target, 1.0, float(avg_factor))
    assert torch.equal(loss, expected)
    both = build(_kd_config(data, tmp_path, tau0=3.0, soften="both").model).eval()
    both.kd_progress = 0.0
    loss = both.distill_losses(student, teacher, targets, float(avg_factor))["loss_kd_heatmap"]
    assert torch.equal(loss, heatmap_focal_kd(student.heatmap_logits, soft_target, 3.0,
                                              float(avg_factor)))
    assert not torch.equal(loss, expected)


def _bn_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_teacher_gets_no_gradients_and_keeps_its_batchnorm_statistics(data, tmp_path):
    cfg = _kd_config(data, tmp_path)
    kd = build(cfg.model)
    kd.train()
    teacher = kd.teacher.model
    assert not any(m.training for m in teacher.modules())
    before = _bn_state(teacher)
    student_before = copy.deepcopy(kd.backbone.state_dict())
    inputs, samples = batch(cfg, kd, n=2)
    optimizer = torch.optim.SGD(kd.parameters(), lr=0.1)
    losses = kd.loss(inputs, samples)
    sum(v for k, v in losses.items() if "loss" in k).backward()
    optimizer.step()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats included
    assert any(not torch.equal(student_before[k], v) for k, v in kd.backbone.state_dict().items())


def test_teacher_is_outside_checkpoints_and_the_optimizer(data, tmp_path):
    kd = build(_kd_config(data, tmp_path).model)
    assert not any(k.startswith("teacher") for k in kd.state_dict())
    teacher_ids = {id(p) for p in kd.teacher.parameters()}
    assert teacher_ids and not teacher_ids & {id(p) for p in kd.parameters()}
    assert not any(m is kd.teacher.model for m in kd.modules())
    kd.to(torch.float64)  # device/dtype moves still reach the teacher
    assert all(p.dtype == torch.float64 for p in kd.teacher.parameters())


def test_exported_student_is_a_plain_centernet_with_the_trained_weights(data, tmp_path):
    cfg = _kd_config(data, tmp_path)
    kd = build(cfg.model)
    assert isinstance(kd.hint_adapter, torch.nn.Sequential)  # widths 16 -> 32 differ
    student = kd.export_student()
    assert type(student).__name__ == "CenterNet"
    kd_state = kd.state_dict()
    for key, value in student.state_dict().items():
        assert torch.equal(value, kd_state[key])
    assert not any(k.startswith("hint_adapter") for k in student.state_dict())
    x = torch.randn(1, 3, 64, 64)
    kd.eval()
    for a, b in zip(kd(x, mode="tensor"), student(x, mode="tensor"), strict=True):
        assert torch.equal(a[0], b[0])


def test_temperature_schedule_endpoints_and_monotone():
    assert softening_temperature(0.0, 2.0, 1 / 3) == 2.0
    for progress in (1 / 3, 0.5, 1.0, 1.5):
        assert softening_temperature(progress, 2.0, 1 / 3) == 1.0
    grid = [softening_temperature(i / 100, 3.0, 0.4) for i in range(101)]
    assert all(a >= b for a, b in itertools.pairwise(grid))
    assert grid[0] == 3.0 and grid[-1] == 1.0 and 1.0 < grid[20] < 3.0
    assert softening_temperature(0.7, 1.0, 1 / 3) == 1.0  # tau0 = 1: softening off


def test_model_temperature_follows_progress(data, tmp_path):
    kd = build(_kd_config(data, tmp_path, tau0=4.0, soften_fraction=0.5).model)
    assert kd.temperature == 4.0
    kd.kd_progress = 0.25
    assert kd.temperature == pytest.approx(2.5)
    kd.kd_progress = 0.9
    assert kd.temperature == 1.0


def test_distill_config_rejects_unknown_keys_and_bad_values():
    from kdbench.benchmarks.config import from_mapping

    with pytest.raises(ConfigError, match=r"lambda_hm.*allowed keys"):
        from_mapping(DistillConfig, {"lambda_hm": 1.0}, "model.distill")
    with pytest.raises(ConfigError, match="heatmap must be one of focal, kl"):
        DistillConfig(heatmap="mse")
    with pytest.raises(ConfigError, match="tau0 must be >= 1"):
        DistillConfig(tau0=0.5)
    with pytest.raises(ConfigError, match="soften must be one of target, both"):
        DistillConfig(soften="student")
    with pytest.raises(ConfigError, match="negative: lambda_hint"):
        DistillConfig(lambda_hint=-1.0)
    assert DistillConfig() == DistillConfig(
        heatmap="focal", retain_positives=True, tau0=2.0, soften="target", soften_fraction=1 / 3,
        lambda_heatmap=1.0, lambda_wh=0.1, lambda_offset=1.0, lambda_hint=1.0)


def test_teacher_must_be_a_centernet(data, tmp_path):
    cfg = _kd_config(data, tmp_path)
    cfg.model.teacher = dict(cfg.model.teacher, type="RetinaNet")
    with pytest.raises(ConfigError, match=r"model\.teacher must be a CenterNet config"):
        build(cfg.model)


def test_full_coco_configs_build_and_distill_r50_into_r18():
    """The COCO recipe configs: R50 teacher, R18 student, same 64-channel neck (no adapter)."""
    kd_cfg = Config.fromfile(str(CONFIGS_DIR / "full" / "ctkd.py"))
    student = Config.fromfile(str(CONFIGS_DIR / "full" / "student.py"))
    teacher = Config.fromfile(str(CONFIGS_DIR / "full" / "teacher.py"))
    assert teacher.model.backbone.depth == 50 and student.model.backbone.depth == 18
    assert not student.model.neck.use_dcn and student.model.bbox_head.num_classes == 80
    assert kd_cfg.train_cfg.max_epochs == student.train_cfg.max_epochs == 28
    kd = build(kd_cfg.model)
    assert isinstance(kd.hint_adapter, torch.nn.Identity)
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    samples = []
    for _ in range(2):
        sample = DetDataSample(metainfo={"batch_input_shape": (64, 64), "img_shape": (64, 64)})
        sample.gt_instances = InstanceData(bboxes=torch.tensor([[8.0, 8.0, 40.0, 48.0]]),
                                           labels=torch.tensor([3]))
        samples.append(sample)
    losses = kd.loss(torch.randn(2, 3, 64, 64), samples)
    assert {"loss_center_heatmap", "loss_kd_heatmap", "loss_kd_hint"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
