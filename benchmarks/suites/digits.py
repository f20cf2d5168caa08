# Real-image smoke suite: scikit-learn's 8x8 handwritten digits (shipped inside the
# package, so it runs offline), upsampled/padded to 32x32. Lets CI track accuracy on real
# data in minutes.
name = "digits"
description = "sklearn handwritten digits, 10 classes, upsampled to 32x32 (real images)"
metric = "top1"

dataset = dict(type="digits", size=32)

_train = dict(epochs=8, batch_size=64, lr=0.05, schedule="cosine", eval_batch_size=500)

budgets = dict(
    smoke=dict(
        pairs=[("resnet14", "resnet8")],
        train=_train,
        teacher_train=dict(_train, epochs=12),
        seeds=1,
        latency=dict(rounds=4, warmup=3, min_iters=2, max_iters=50, target_round_s=0.03),
    ),
    short=dict(
        pairs=[("resnet56", "resnet20"), ("wrn_40_2", "wrn_16_2")],
        train=dict(_train, epochs=30),
        seeds=3,
    ),
    full=dict(
        pairs=[("resnet56", "resnet20"), ("wrn_40_2", "wrn_16_2"), ("vgg13", "vgg8")],
        train=dict(epochs=100, batch_size=64, lr=0.05, schedule="multistep",
                   milestones=[60, 80, 90]),
        seeds=5,
    ),
)
