"""The model zoo: CIFAR-size (32x32) networks registered in ``benchmarks.registry.MODELS``.

Importing this package registers every model; build one with
``benchmarks.registry.build_model(name, num_classes)``. Every model returns logits only and
exposes ``stages()``, the modules whose outputs are its natural stage features (take them with
forward hooks).
"""

from kdbench.benchmarks.models import mobilenetv2, resnet, vgg, wrn

__all__ = ["mobilenetv2", "resnet", "vgg", "wrn"]
