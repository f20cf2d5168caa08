# COCO 2017 detection with mmdet's CenterNet recipe (detection/configs/full); meant for GPUs:
# `kdbench run --suite coco --budget full [--data-root DIR]` (needs the `detection` extra).
name = "coco"
description = "COCO 2017 detection (80 classes), mmdet CenterNet recipe, 512x512 test input"
metric = "mAP"
evaluators = ("coco_bbox",)
table_metrics = ("AP50",)

imports = ("kdbench.detection.task",)
default_methods = ("teacher", "scratch", "ctkd")

# <root>/annotations/instances_{train,val}2017.json, <root>/train2017/, <root>/val2017/
dataset = dict(type="coco_detection", root="data/coco", input_size=(512, 512))

budgets = dict(
    # mmdet's 140-epoch CenterNet schedule: CenterNet-R50 teacher, CenterNet-R18 student.
    full=dict(
        pairs=[("centernet_r50", "centernet_r18")],
        seeds=1,
        latency=dict(batch_sizes=(1, 16), rounds=10, warmup=10, max_iters=200,
                     target_round_s=0.5),
        methods=dict(ctkd=dict(config="full/ctkd.py")),
    ),
)
