"""Splitting a network into blocks and building thinner stand-ins for them.

A *block* is a submodule on the network's main path (a VGG block between two pools, a
ResNet stage, or one residual unit) that can be swapped for another module with the same
input and output shapes. Progressive blockwise distillation replaces blocks one at a time.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Literal

import torch
from torch import nn

from kdbench.benchmarks.measure.params import evaluating
from kdbench.methods.common.features import capture
from kdbench.methods.common.pruning import prune_inside
from kdbench.methods.common.reinit import he_init_

Split = Literal["stages", "units"]  # VGG blocks / ResNet stages | residual units
OUTPUTS = ("relu", "linear")


class StudentBlock(nn.Sequential):
    """A thinned copy of a teacher block (``body``) plus a 1x1 conv-BN(-ReLU) (``recover``)
    that mixes its channels back to the teacher block's output width; the ReLU only when
    the teacher block's output is one (``output``: "relu" | "linear")."""

    @property
    def output(self) -> str:
        return "relu" if isinstance(self.recover[-1], nn.ReLU) else "linear"

    def __init__(self, body: nn.Module, recover: nn.Module):
        super().__init__(OrderedDict(body=body, recover=recover))


def block_names(model: nn.Module, split: Split) -> list[str]:
    """Qualified names of the model's blocks in forward order.

    ``stages``: the modules ``model.stages()`` returns; ``units``: the children of each
    stage, which must themselves contain a conv (residual units, not single layers).
    """
    stages = getattr(model, "stages", None)
    if not callable(stages):
        raise ValueError(f"{type(model).__name__} has no stages() method to split it at")
    names = {id(m): name for name, m in model.named_modules()}
    blocks = list(stages())
    if split == "units":
        units = [unit for stage in blocks for unit in stage.children()]
        bare = [type(u).__name__ for u in units if not _has_conv(u)]
        if bare:
            raise ValueError(f"split='units' needs stages made of residual units; "
                             f"{type(model).__name__}'s stages hold single layers ({bare[0]}, "
                             "...); use split='stages'")
        blocks = units
    return [names[id(b)] for b in blocks]


def _has_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def block_inputs(model: nn.Module, names: list[str],
                 example_inputs: torch.Tensor) -> list[torch.Tensor]:
    """The input each named block receives when ``model`` (in eval mode) runs on
    ``example_inputs``."""
    blocks = [model.get_submodule(n) for n in names]
    with torch.no_grad(), evaluating(model), capture(blocks) as seen:
        model(example_inputs)
    return [s.input for s in seen]


def output_kind(output: torch.Tensor) -> str:
    """``"linear"`` when a block's output has a negative value, else ``"relu"``.

    Post-activation blocks (ResNet units and stages, VGG blocks) end in a ReLU and are never
    negative; pre-activation ones (WRN stages: the residual sum before the next block's
    BN-ReLU) and MobileNetV2's linear bottlenecks are negative almost everywhere a ReLU
    would clip, so one example input tells them apart.
    """
    return "linear" if bool((output < 0).any()) else "relu"


def thin_block(block: nn.Module, example_input: torch.Tensor,
               width_ratio: float, output: str | None = None) -> StudentBlock:
    """A randomly initialised student for ``block``: same layers, kernels, strides and
    padding (so the same receptive field), ``width_ratio`` of the filters of every conv
    (channels tied to the block's input by an identity shortcut keep their width), then
    a 1x1 conv-BN back to the block's output channels, followed by a ReLU iff the teacher
    block's output is ReLU-terminated (``output``; None: ``output_kind`` of the teacher
    block's output on ``example_input``), so a student can match negative targets.
    """
    if output is not None and output not in OUTPUTS:
        raise ValueError(f"output must be None or one of {', '.join(OUTPUTS)}; got {output!r}")
    body = copy.deepcopy(block).requires_grad_(True)
    with evaluating(block, body):  # no BN statistics may move here
        with torch.no_grad():
            target = block(example_input)
        out_channels = target.shape[1]
        output = output or output_kind(target)
        prune_inside(body, example_input, 1.0 - width_ratio)
        with torch.no_grad():
            mid = body(example_input).shape[1]
    he_init_(body)
    recover = nn.Sequential(
        nn.Conv2d(mid, out_channels, kernel_size=1, bias=False),
        nn.BatchNorm2d(out_channels),
        *([nn.ReLU()] if output == "relu" else []),
    )
    he_init_(recover)
    return StudentBlock(body, recover).to(example_input.device)
