# CIFAR-100 suite: the de-facto KD benchmark (RepDistiller's protocol for `full`).
# An mmengine Python config; `kdbench run --suite cifar100 --budget smoke|short|full`.
name = "cifar100"
description = "CIFAR-100 image classification, 32x32, 100 classes"
metric = "top1"

# Reads <root>/cifar-100-python (the official pickle layout); downloads it when missing
# and the network allows; otherwise runs on generated data in the same format and labels
# every record data_source=synthetic.
dataset = dict(type="cifar100", root="data", download=True, synthetic_fallback=True)

# Gated by `nox -s regress` (smoke budget, every method): always on the generated CIFAR-100
# stand-in, so every machine computes the same numbers whether or not it has the real data
# (the root, under the gate's cache folder, never holds the dataset).
regress = dict(dataset=dict(root="{cache_dir}/regress-uses-generated-data", download=False,
                            synthetic_fallback=True))

# RepDistiller / CRD teacher-student pairs (CIFAR-100 top-1 in its README).
_paper_pairs = [
    ("resnet56", "resnet20"),
    ("resnet110", "resnet20"),
    ("resnet110", "resnet32"),
    ("resnet32x4", "resnet8x4"),
    ("wrn_40_2", "wrn_16_2"),
    ("wrn_40_2", "wrn_40_1"),
    ("vgg13", "vgg8"),
]

# Named method variants: extra leaderboard rows of a method with other settings. Each runs
# when named (--methods lma_k4) or by default in the budgets that list it under `variants`.
# LMA's segment-count sweep K in {4, 8, 12} (the plain `lma` row is K=8).
variants = dict(
    lma_k4=dict(method="lma", config=dict(num_segments=4)),
    lma_k12=dict(method="lma", config=dict(num_segments=12)),
    # Robust pruning's 2/4/8/16x curve (the plain row is 16x; λ scales with log2 of it)
    robust_prune_kd_x2=dict(method="robust_prune_kd", config=dict(compression=2.0, controls=())),
    robust_prune_kd_x4=dict(method="robust_prune_kd", config=dict(compression=4.0, controls=())),
    robust_prune_kd_x8=dict(method="robust_prune_kd", config=dict(compression=8.0, controls=())),
    # Combine-Net with one knee per channel group (needed for the paper's params/FLOPs split)
    combine_net_per_block=dict(method="combine_net", config=dict(rate_mode="per_block")),
    # KD on a pruned model, unstructured: ~22x fewer non-zero weights (the paper's CIFAR-100
    # figure); no dense MACs/latency gain, and the rows say so
    pruned_kd_unstructured=dict(method="pruned_kd", config=dict(prune="magnitude", ratio=0.955)),
)
_robust_variants = ["robust_prune_kd_x2", "robust_prune_kd_x4", "robust_prune_kd_x8"]

budgets = dict(
    # Minutes on a 2-core laptop CPU: a class-balanced data subset, a few epochs, one
    # small pair. Exercises every method end to end; accuracies are not paper numbers.
    smoke=dict(
        pairs=[("resnet14", "resnet8")],
        train=dict(epochs=4, batch_size=64, lr=0.1, schedule="cosine", eval_batch_size=500),
        teacher_train=dict(epochs=8, batch_size=64, lr=0.1, schedule="cosine",
                           eval_batch_size=500),
        train_subset=5000,
        test_subset=1000,
        seeds=1,
        latency=dict(rounds=4, warmup=3, min_iters=2, max_iters=50, target_round_s=0.03),
        # opt-in robust accuracy (--evaluators robust): PGD-20 on a fixed 200-image subset
        evaluator_options=dict(robust=dict(n_images=200)),
        # a sweep job of this budget is CPU-sized (`kdbench sweep`)
        resources=dict(gpus_per_node=0, cpus_per_task=2, mem_gb=8, timeout_min=60),
    ),
    # About an hour per pair on one GPU: full data, 60 epochs cosine, 3 seeds.
    short=dict(
        pairs=[("resnet56", "resnet20"), ("resnet32x4", "resnet8x4")],
        train=dict(epochs=60, batch_size=64, lr=0.05, schedule="cosine"),
        seeds=3,
        variants=["lma_k4", "lma_k12", *_robust_variants, "combine_net_per_block",
                  "pruned_kd_unstructured"],
    ),
    # The papers' protocol: 240 epochs, SGD 0.05 (x0.1 at 150/180/210), wd 5e-4, batch 64.
    full=dict(
        pairs=_paper_pairs,
        train=dict(epochs=240, batch_size=64, lr=0.05, schedule="multistep",
                   milestones=[150, 180, 210]),
        seeds=5,
        latency=dict(rounds=20, warmup=50, max_iters=1000, target_round_s=0.5),
        variants=["lma_k4", "lma_k12", *_robust_variants, "combine_net_per_block",
                  "pruned_kd_unstructured"],
    ),
)
