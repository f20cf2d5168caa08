# Synthetic COCO suite: coloured shapes on noise in the real COCO layout (detection/synthetic.py),
# generated once into the cache, so the detection benchmark runs offline on a CPU in minutes.
# `nox -s bench-detection` (or `python -m detection.bench --suite synthetic-coco`).
name = "synthetic-coco"
description = "synthetic COCO-format detection: 2 colour classes, 128x128 images"
metric = "mAP"

dataset = dict(type="synthetic", num_train=512, num_val=128, image_size=128,
               classes=("red", "blue"), seed=0)
input_size = (128, 128)  # what MACs and latency are measured at

budgets = dict(
    # Minutes on a 2-core CPU: teacher, student alone and ctkd, one seed.
    smoke=dict(
        teacher="centernet_r18w32",
        student="centernet_r18w16",
        teacher_config="smoke/teacher.py",
        student_config="smoke/student.py",
        ctkd_config="smoke/ctkd.py",
        seeds=1,
        latency=dict(batch_sizes=(1,), rounds=4, warmup=3, min_iters=2, max_iters=50,
                     target_round_s=0.05),
    ),
)
