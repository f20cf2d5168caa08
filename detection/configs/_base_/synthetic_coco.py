# The tiny synthetic COCO set (detection/synthetic.py) with mmdet's own dataset, pipelines and
# CocoMetric. The benchmark writes the set and points data_root at it; to train by hand, write
# it with `python -m kdbench.detection.synthetic DIR` and pass `--cfg-options` data roots.
_base_ = ["mmdet::_base_/default_runtime.py"]

custom_imports = dict(imports=["kdbench.detection.ctkd"], allow_failed_imports=False)

dataset_type = "CocoDataset"
data_root = "data/synthetic-coco/"
classes = ("red", "blue")
image_size = 128
backend_args = None

train_pipeline = [
    dict(type="LoadImageFromFile", backend_args=backend_args),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="Resize", scale=(image_size, image_size), keep_ratio=False),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackDetInputs"),
]
# mmdet's CenterNet test transform: pads to (size | 31) + 1 and records the `border` that
# CenterNetHead subtracts when decoding.
test_pipeline = [
    dict(type="LoadImageFromFile", backend_args=backend_args, to_float32=True),
    dict(type="RandomCenterCropPad", ratios=None, border=None, mean=[0, 0, 0], std=[1, 1, 1],
         to_rgb=True, test_mode=True, test_pad_mode=["logical_or", 31], test_pad_add_pix=1),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="PackDetInputs",
         meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "border")),
]

train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type="DefaultSampler", shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=dict(classes=classes),
        ann_file="annotations/instances_train2017.json",
        data_prefix=dict(img="train2017/"),
        filter_cfg=dict(filter_empty_gt=True, min_size=4),
        pipeline=train_pipeline,
        backend_args=backend_args,
    ),
)
val_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    drop_last=False,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=dict(classes=classes),
        ann_file="annotations/instances_val2017.json",
        data_prefix=dict(img="val2017/"),
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=backend_args,
    ),
)
test_dataloader = val_dataloader

val_evaluator = dict(type="CocoMetric", ann_file=data_root + "annotations/instances_val2017.json",
                     metric="bbox", format_only=False, backend_args=backend_args)
test_evaluator = val_evaluator

# CPU-sized schedule. Adam rather than the COCO recipe's SGD: from random init (no ImageNet
# weights offline) it reaches a usable detector in a few hundred steps. Students: 3 epochs of
# the 512-image set (192 steps); the teacher (smoke/teacher.py) trains twice as long.
max_epochs = 3
train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="Adam", lr=2e-3, weight_decay=0),
    clip_grad=dict(max_norm=35, norm_type=2),
)
param_scheduler = [
    dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=20),
    dict(type="CosineAnnealingLR", by_epoch=True, begin=0, end=max_epochs, eta_min_ratio=0.01),
]
default_hooks = dict(logger=dict(type="LoggerHook", interval=10),
                     checkpoint=dict(type="CheckpointHook", interval=1, max_keep_ckpts=1))
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
               dist_cfg=dict(backend="gloo"))
