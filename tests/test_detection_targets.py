"""CenterNet targets and decoding as the detection benchmark uses them.

These pin down mmdet behaviour the ctkd losses rely on: Gaussian peaks of exactly 1 merged by
max, positives counted per (class, cell), size/offset targets, and an exact round trip from
targets through mmdet's decoder and CocoMetric.
"""

from __future__ import annotations

import torch
from detection_support import batch, build, dataset, smoke_config, synthetic_data
from mmdet.models.utils import gen_gaussian_target
from mmdet.registry import METRICS

STRIDE = 4


def _targets(head, boxes, labels, feat=(1, 2, 32, 32)):
    return head.get_targets([torch.tensor(boxes, dtype=torch.float32)],
                            [torch.tensor(labels)], feat, (feat[2] * STRIDE, feat[3] * STRIDE))


def test_gaussian_peak_is_exactly_one_in_range_and_symmetric():
    heatmap = torch.zeros(21, 21)
    gen_gaussian_target(heatmap, [10, 10], 4)
    assert heatmap[10, 10].item() == 1.0
    assert heatmap.min() >= 0 and heatmap.max() == 1.0
    assert torch.equal(heatmap, heatmap.flip(0)) and torch.equal(heatmap, heatmap.flip(1))
    assert torch.equal(heatmap, heatmap.T)
    single = torch.zeros(5, 5)
    gen_gaussian_target(single, [2, 3], 0)
    assert torch.count_nonzero(single) == 1 and single[3, 2].item() == 1.0


def test_overlapping_same_class_gaussians_merge_by_max(synthetic_coco, tmp_path):
    head = build(smoke_config("student", synthetic_data(synthetic_coco, tmp_path),
                              tmp_path).model).bbox_head
    a, b = [40.0, 40.0, 80.0, 80.0], [48.0, 44.0, 88.0, 84.0]  # centres 2 cells apart
    both = _targets(head, [a, b], [0, 0])[0]["center_heatmap_target"]
    only_a = _targets(head, [a], [0])[0]["center_heatmap_target"]
    only_b = _targets(head, [b], [0])[0]["center_heatmap_target"]
    assert torch.equal(both, torch.maximum(only_a, only_b))
    assert both.max().item() == 1.0
    assert (only_a + only_b).max() > 1.0  # what a sum would have given
    assert int(both.eq(1).sum()) == 2


def test_positives_count_distinct_class_cells_and_l1_normaliser_is_twice(synthetic_coco,
                                                                           tmp_path):
    head = build(smoke_config("student", synthetic_data(synthetic_coco, tmp_path),
                              tmp_path).model).bbox_head
    boxes = [[8.0, 8.0, 24.0, 24.0],    # centre cell (4, 4), class 0
             [9.0, 9.0, 23.0, 23.0],    # same class, same cell: one positive for both
             [8.0, 8.0, 24.0, 24.0],    # class 1, same cell: a positive of its own
             [60.0, 60.0, 100.0, 90.0]]  # class 0 elsewhere
    targets, avg_factor = _targets(head, boxes, [0, 0, 1, 0])
    assert int(targets["center_heatmap_target"].eq(1).sum()) == 3
    assert int(avg_factor) == 3
    # GT L1 size loss with every prediction off by exactly 1: the size-loss weight x (sum over
    # the weighted cells and both channels) / (2 x avg_factor)
    weighted_cells = int(targets["wh_offset_target_weight"][:, 0].sum())
    wh = targets["wh_target"] + 1.0
    losses = head.loss_by_feat(
        [targets["center_heatmap_target"]], [wh], [targets["offset_target"]],
        [_instances(boxes, [0, 0, 1, 0])], [{"batch_input_shape": (128, 128)}])
    expected = head.loss_wh.loss_weight * (2 * weighted_cells) / (2 * 3)
    assert abs(losses["loss_wh"].item() - expected) < 1e-5
    assert losses["loss_offset"].item() < 1e-6


def _instances(boxes, labels):
    from mmengine.structures import InstanceData

    return InstanceData(bboxes=torch.tensor(boxes), labels=torch.tensor(labels))


def test_size_target_is_box_size_over_stride_and_offset_in_unit_interval(synthetic_coco,
                                                                          tmp_path):
    head = build(smoke_config("student", synthetic_data(synthetic_coco, tmp_path),
                              tmp_path).model).bbox_head
    boxes = [[10.0, 20.0, 47.0, 33.0], [70.0, 65.0, 121.0, 126.0]]
    targets, _ = _targets(head, boxes, [0, 1])
    for x1, y1, x2, y2 in boxes:
        cx, cy = (x1 + x2) / 2 / STRIDE, (y1 + y2) / 2 / STRIDE
        wh = targets["wh_target"][0, :, int(cy), int(cx)]
        assert torch.allclose(wh, torch.tensor([(x2 - x1) / STRIDE, (y2 - y1) / STRIDE]))
        offset = targets["offset_target"][0, :, int(cy), int(cx)]
        assert torch.allclose(offset, torch.tensor([cx - int(cx), cy - int(cy)]))
    weight = targets["wh_offset_target_weight"].bool()
    offsets = targets["offset_target"][weight]
    assert (offsets >= 0).all() and (offsets < 1).all()


def test_targets_decode_back_to_the_boxes_and_cocometric_gives_ap_1(synthetic_coco, tmp_path):
    """Targets in padded-image coordinates, decoded by mmdet with the test pipeline's border:
    the GT boxes come back, and CocoMetric scores the set AP = 1.0."""
    cfg = smoke_config("student", synthetic_data(synthetic_coco, tmp_path), tmp_path)
    model = build(cfg.model).eval()
    head = model.bbox_head
    metric = METRICS.build(cfg.test_evaluator)
    metric.dataset_meta = dataset(cfg, "test").metainfo
    n_images = len(dataset(cfg, "test"))
    inputs, samples = batch(cfg, model, n=n_images, split="test")
    for image, sample in zip(inputs, samples, strict=True):
        meta = sample.metainfo
        top, left = float(meta["border"][0]), float(meta["border"][2])
        gt = sample.gt_instances
        padded = gt.bboxes + torch.tensor([left, top, left, top])
        height, width = meta["batch_input_shape"]
        targets, _ = head.get_targets([padded], [gt.labels],
                                      (1, head.num_classes, height // STRIDE, width // STRIDE),
                                      (height, width))
        assert image.shape[-2:] == (height, width)
        result = head.predict_by_feat([targets["center_heatmap_target"]],
                                      [targets["wh_target"]], [targets["offset_target"]],
                                      [meta], rescale=True)[0]
        found = result[result.scores == 1.0]
        assert len(found) == len(gt)
        for box, label in zip(gt.bboxes, gt.labels, strict=True):
            error = (found.bboxes - box).abs().amax(dim=1)
            match = (error < 1e-4 * STRIDE) & (found.labels == label)
            assert match.sum() == 1, f"box {box.tolist()} not decoded back"
        sample.pred_instances = result
        metric.process({}, [sample.to_dict()])
    results = metric.evaluate(n_images)
    assert results["coco/bbox_mAP"] == 1.0
    assert results["coco/bbox_mAP_50"] == 1.0 and results["coco/bbox_mAP_75"] == 1.0
