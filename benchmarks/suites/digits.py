# Real-image smoke suite: scikit-learn's 8x8 handwritten digits (shipped inside the
# package, so it runs offline), upsampled/padded to 32x32. Lets CI track accuracy on real
# data in minutes.
name = "digits"
description = "sklearn handwritten digits, 10 classes, upsampled to 32x32 (real images)"
metric = "top1"

dataset = dict(type="digits", size=32)

# Gated by `nox -s regress` (smoke budget): the baselines only, which keeps the gate (and so
# CI) in minutes.
regress = dict(methods=("teacher", "scratch", "kd"))

_train = dict(epochs=8, batch_size=64, lr=0.05, schedule="cosine", eval_batch_size=500)

budgets = dict(
    smoke=dict(
        pairs=[("resnet14", "resnet8")],
        train=_train,
        teacher_train=dict(_train, epochs=12),
        seeds=1,
        latency=dict(rounds=4, warmup=3, min_iters=2, max_iters=50, target_round_s=0.03),
    ),
    # The claims budget on 2 CPU cores: 3 seeds of every method and its controls (the fewest
    # a claim can hold on; one seed of all methods takes about 20 min as two 1-thread jobs),
    # one teacher (trained once, shared by the seeds) clearly better than the student alone. A
    # class-balanced 500-image training subset keeps the rows off the ceiling (on all 1,347
    # images every row lands at 97.6-99.3 %, where one test image is 0.22 points); each
    # method's own schedule is scaled to about the student's 240 steps (its defaults are the
    # papers' hundreds of epochs).
    #   kdbench sweep --suite digits --budget short --executor local --max-parallel 2
    short=dict(
        pairs=[("resnet20", "resnet8")],
        train=dict(_train, epochs=30, lr=0.1, cpu_channels_last=True),
        teacher_train=dict(_train, epochs=60, lr=0.1, cpu_channels_last=True),
        train_subset=500,
        teacher_seed=0,
        seeds=3,
        latency=dict(rounds=8, warmup=5, min_iters=3, max_iters=100, target_round_s=0.05),
        evaluator_options=dict(robust=dict(n_images=450)),
        methods=dict(
            okddip=dict(rampup_epochs=9.0),
            progressive_block_kd=dict(block_epochs=9, block_lr=0.05, finetune_epochs=15,
                                      finetune_lr=0.01),
            channel_selection=dict(finetune_epochs=24),
            combine_net=dict(epochs=30, calib_batches=6, val_images=100),
            hybrid_lowrank_quant=dict(hint_epochs=9, kd_epochs=30),
            kdas_reid=dict(search_epochs=12, search_images=250, search_channels=8,
                           search_layers=3, ops=("none", "skip_connect", "avg_pool_3x3",
                                                 "max_pool_3x3", "sep_conv_3x3",
                                                 "dil_conv_3x3", "part_aware"),
                           channels=16, layers=5, retrain_epochs=30, retrain_lr=0.025),
            robust_prune_kd=dict(compression=4.0, attack_steps=3, teacher_attack_steps=1,
                                 teacher_step_size=10 / 255, prox_epochs=9, finetune_epochs=6,
                                 train_images=500, final_bn_batches=8,
                                 controls=("magnitude_adv_ft", "prox_no_kd")),
        ),
    ),
    full=dict(
        pairs=[("resnet56", "resnet20"), ("wrn_40_2", "wrn_16_2"), ("vgg13", "vgg8")],
        train=dict(epochs=100, batch_size=64, lr=0.05, schedule="multistep",
                   milestones=[60, 80, 90]),
        seeds=5,
    ),
)
