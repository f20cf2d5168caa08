# COCO 2017 detection with mmdet's CenterNet recipe (detection/configs/full).
# `nox -s bench-detection -- --suite coco --budget full [--data-root DIR]`; meant for GPUs.
name = "coco"
description = "COCO 2017 detection (80 classes), mmdet CenterNet recipe, 512x512 test input"
metric = "mAP"

# <root>/annotations/instances_{train,val}2017.json, <root>/train2017/, <root>/val2017/
dataset = dict(type="coco", root="data/coco")
input_size = (512, 512)

budgets = dict(
    # mmdet's 140-epoch CenterNet schedule: CenterNet-R50 teacher, CenterNet-R18 student.
    full=dict(
        teacher="centernet_r50",
        student="centernet_r18",
        teacher_config="full/teacher.py",
        student_config="full/student.py",
        ctkd_config="full/ctkd.py",
        seeds=1,
        latency=dict(batch_sizes=(1, 16), rounds=10, warmup=10, max_iters=200,
                     target_round_s=0.5),
    ),
)
