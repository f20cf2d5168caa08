# Market-1501 person re-identification (torchreid's protocol): rank-1 / mAP on query vs gallery.
# An mmengine Python config; `kdbench run --suite reid-market1501 --budget smoke|short|full`.
# [R] marks kdbench's own choice where no paper gives one; see CONTRIBUTING.md, "Where a number
# comes from: [S], [P], [R]".
name = "reid-market1501"
description = "Market-1501 person ReID: 751 training ids, CMC rank-1/5/10 and mAP"
metric = "rank1"
evaluators = ("reid",)
table_metrics = ("mAP", "rank5")
# ReID deploys the embedding network (features for retrieval), not the identity classifier:
# params, MACs and latency are measured on model.embed.
deployed_forward = "embed"
# The task package registering the market1501 dataset, the reid evaluator and the *_reid models.
imports = ("kdbench.reid",)
# Run when no --methods is given (`nox -s bench-reid`): the baselines and KDAS-ReID.
default_methods = ("teacher", "scratch", "kd", "kdas_reid")

# Reads <root>/market1501/Market-1501-v15.09.15/{bounding_box_train,query,bounding_box_test};
# without it runs on a generated set in the same layout (records say data_source=synthetic).
dataset = dict(type="market1501", root="data", height=256, width=128, synthetic_fallback=True)

_smoke_latency = dict(rounds=4, warmup=3, min_iters=2, max_iters=50, target_round_s=0.03)

budgets = dict(
    # Minutes on a 2-core CPU: 64x32 inputs, a few epochs (on real Market-1501 a class-balanced
    # 2,000-image subset and 500 queries). The teacher is ResNet-18 here (kdbench's CPU smoke
    # scale [R]): a random-init ResNet-50 does not get below chance-level loss in a CPU-minutes
    # budget, so it would teach nothing. ResNet-50 is the teacher of `short` and `full`.
    smoke=dict(
        pairs=[("resnet18_reid", "resnet10_reid")],
        dataset=dict(height=64, width=32),
        train=dict(epochs=6, batch_size=32, lr=0.01, weight_decay=5e-4, schedule="cosine",
                   eval_batch_size=256),
        teacher_train=dict(epochs=8, batch_size=32, lr=0.01, weight_decay=5e-4,
                           schedule="cosine", eval_batch_size=256),
        train_subset=2000,
        test_subset=500,
        seeds=1,
        latency=_smoke_latency,
        # At 64x32 the derived net retrains cheaply: the suite's 6 epochs, like every student
        # here (the method's own smoke default, 2 epochs, is for 32x32 full-resolution cells).
        # The searched cells are retrained as a 32-channel, 8-cell network (0.16x the
        # teacher's params): the method's smoke size (8 channels, 2 cells, 0.001x) ends at
        # chance rank-1 here (0.7 %), 16 channels x 5 cells at 22 %, this size at 50 % (seed 0).
        methods=dict(kdas_reid=dict(retrain_epochs=None, channels=32, layers=8)),
    ),
    # One GPU, a few hours: ImageNet-initialised pair at 128x64, 60 epochs.
    short=dict(
        pairs=[("resnet50_reid_imagenet", "resnet18_reid_imagenet")],
        dataset=dict(height=128, width=64),
        train=dict(epochs=60, batch_size=64, lr=0.05, weight_decay=5e-4, schedule="cosine",
                   warmup_epochs=5),
        seeds=3,
    ),
    # 256x128, ImageNet-initialised ResNet-50 teacher (as in KDAS-ReID), ID-loss recipe:
    # SGD 0.05, warm-up 5 epochs, x0.1 at 40 and 55, 60 epochs.
    full=dict(
        pairs=[("resnet50_reid_imagenet", "resnet18_reid_imagenet")],
        train=dict(epochs=60, batch_size=64, lr=0.05, weight_decay=5e-4, schedule="multistep",
                   milestones=[40, 55], warmup_epochs=5),
        seeds=3,
    ),
)
