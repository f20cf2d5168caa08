# Fashion-MNIST (Zalando, 2017): 70,000 real 28x28 grey images of 10 clothing classes, the
# real-image suite every method runs on offline (Debian's `dataset-fashion-mnist` package).
# An mmengine Python config; `kdbench run --suite fashion-mnist --budget smoke|short|full`.
#
# The images are zero-padded to 32x32 and replicated to 3 channels, so the CIFAR zoo models
# run unchanged: params, MACs and latency are those of exactly the network that runs (its
# first convolution sees 3 identical channels). Every budget scores the whole 10,000-image
# test set.
name = "fashion-mnist"
description = "Fashion-MNIST, 10 clothing classes, 28x28 grey padded to 32x32 (real images)"
metric = "top1"

# Reads the four IDX files from <root>/fashion-mnist/, <root>/FashionMNIST/raw/, <root>, then
# /usr/share/datasets/fashion-mnist (Debian); downloads through torchvision when none is found
# and the network allows. Never replaced by generated data: missing files are an error that
# says where it looked and how to get them.
dataset = dict(type="fashion_mnist", root="data", download=True, synthetic_fallback=False)

# Gated by `nox -s regress` (smoke budget, every method on real images), which also writes
# the claims table of its runs: a report, not a gate (smoke has too few steps and seeds for
# stable verdicts).
regress = dict(claims=True)

_eval = dict(eval_batch_size=1000)

budgets = dict(
    # Every method end to end in minutes on 2 CPU cores: a class-balanced 2,000-image training
    # subset, a few epochs, one small pair; gated by `nox -s regress`. Too few steps for the
    # methods' effects to show: that is what `short` is for.
    smoke=dict(
        pairs=[("resnet14", "resnet8")],
        train=dict(epochs=5, batch_size=64, lr=0.1, schedule="cosine", **_eval),
        teacher_train=dict(epochs=10, batch_size=64, lr=0.1, schedule="cosine", **_eval),
        train_subset=2000,
        seeds=1,
        latency=dict(rounds=4, warmup=3, min_iters=2, max_iters=50, target_round_s=0.03),
        evaluator_options=dict(robust=dict(n_images=200)),
        resources=dict(gpus_per_node=0, cpus_per_task=2, mem_gb=8, timeout_min=30),
    ),
    # The budget at which the methods' effects are measurable on 2 CPU cores: 5 seeds, a pair
    # whose teacher is clearly better than the student trained alone. Sized so that all
    # methods x 5 seeds run in under 2 hours on 2 cores as two 1-thread jobs side by side:
    #   kdbench sweep --suite fashion-mnist --budget short --executor local --max-parallel 2
    short=dict(
        pairs=[("resnet20", "resnet8")],
        train=dict(epochs=10, batch_size=64, lr=0.1, schedule="cosine",
                   cpu_channels_last=True, **_eval),
        teacher_train=dict(epochs=30, batch_size=64, lr=0.1, schedule="cosine",
                           cpu_channels_last=True, **_eval),
        train_subset=2000,
        teacher_seed=0,
        seeds=5,
        latency=dict(rounds=8, warmup=5, min_iters=3, max_iters=100, target_round_s=0.05),
        evaluator_options=dict(robust=dict(n_images=500)),
        # Each method's own schedule scaled to this budget (its defaults are the papers'
        # hundreds of epochs): about as many training steps as the 10 student epochs.
        methods=dict(
            okddip=dict(rampup_epochs=3.0),
            progressive_block_kd=dict(block_epochs=3, block_lr=0.05, finetune_epochs=5,
                                      finetune_lr=0.01),
            channel_selection=dict(finetune_epochs=8),
            combine_net=dict(epochs=10, calib_batches=20, val_images=500),
            hybrid_lowrank_quant=dict(hint_epochs=3, kd_epochs=10),
            kdas_reid=dict(search_epochs=4, search_images=500, search_channels=8,
                           search_layers=3, ops=("none", "skip_connect", "avg_pool_3x3",
                                                 "max_pool_3x3", "sep_conv_3x3",
                                                 "dil_conv_3x3", "part_aware"),
                           channels=16, layers=5, retrain_epochs=10, retrain_lr=0.025),
            # PGD-3 training attack, an FGSM-RS-trained (1 step of 1.25 eps) adversarial
            # teacher, 4x compression, the two controls its claims compare against.
            robust_prune_kd=dict(compression=4.0, attack_steps=3,
                                 teacher_attack_steps=1, teacher_step_size=10 / 255,
                                 prox_epochs=3, finetune_epochs=2, train_images=1000,
                                 final_bn_batches=8,
                                 controls=("magnitude_adv_ft", "prox_no_kd")),
        ),
        resources=dict(gpus_per_node=0, cpus_per_task=2, mem_gb=8, timeout_min=120),
    ),
    # All 60,000 training images; minutes per run on one GPU.
    full=dict(
        pairs=[("resnet56", "resnet20"), ("wrn_40_2", "wrn_16_2")],
        train=dict(epochs=30, batch_size=128, lr=0.1, schedule="cosine", **_eval),
        seeds=5,
    ),
)
