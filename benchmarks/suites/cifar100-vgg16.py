# CIFAR-100 with the classic 5-pool VGG-16-BN teacher: the protocol of progressive blockwise
# KD (Wang et al. IJCAI-18: "VGG-16 is divided into 5 teacher sub-network blocks").
# Everything but the pairs comes from cifar100.py, e.g.
#   kdbench run --suite cifar100-vgg16 --methods progressive_block_kd,kd --budget full
_base_ = ["./cifar100.py"]

name = "cifar100-vgg16"
description = "CIFAR-100 image classification, 32x32, 100 classes; VGG-16 (5 pools) teacher"
regress = None  # not gated (cifar100.py is)

budgets = dict(
    short=dict(pairs=[("vgg16_5pool", "vgg8")]),
    full=dict(pairs=[("vgg16_5pool", "vgg8")]),
)
