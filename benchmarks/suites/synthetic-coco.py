# Synthetic COCO detection: coloured shapes on noise in the real COCO layout
# (detection/synthetic.py), generated once into the cache, so detection runs offline on a CPU
# in minutes: `kdbench run --suite synthetic-coco` (or `nox -s bench-detection`).
name = "synthetic-coco"
description = "synthetic COCO-format detection: 2 colour classes, 128x128 images"
metric = "mAP"
evaluators = ("coco_bbox",)  # COCO bbox mAP / AP50 / AP75 with mmdet's CocoMetric
table_metrics = ("AP50",)

# The detection task (needs the `detection` extra): its datasets, CenterNet models, the
# coco_bbox evaluator and the ctkd method.
imports = ("kdbench.detection.task",)
default_methods = ("teacher", "scratch", "ctkd")

# Measured at the images' size (input_size defaults to image_size).
dataset = dict(type="synthetic_coco", num_train=512, num_val=128, image_size=128,
               classes=("red", "blue"), seed=0)

budgets = dict(
    # Minutes on a 2-core CPU: teacher, student alone and ctkd, one seed. Each model name
    # is an mmdet config (detection/models.py): centernet_r18w32 trains 6 epochs
    # (detection/configs/smoke/teacher.py), the students 3.
    smoke=dict(
        pairs=[("centernet_r18w32", "centernet_r18w16")],
        seeds=1,
        latency=dict(batch_sizes=(1,), rounds=4, warmup=3, min_iters=2, max_iters=50,
                     target_round_s=0.05),
        methods=dict(ctkd=dict(config="smoke/ctkd.py")),
    ),
)
