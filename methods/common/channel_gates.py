"""Per-channel coefficient gates after BatchNorm, and their export to a smaller network.

A gate multiplies each output channel of a conv (or linear) layer by a trainable
coefficient, right after the layer's BN: before BN the scale would be normalised away.
Layers whose channels are summed (a ResNet stage's residual channels) share one
coefficient vector, so a zero removes the channel from the whole sum. Export folds the
coefficients into the BN affine parameters (exact) and physically removes every channel
whose coefficient is 0 with Torch-Pruning; the result has no gates left.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from kdbench.methods.common.pruning import (
    PRUNABLE,
    classifier_of,
    coupled_layers,
    dependency_graph,
    keep_channels,
)
from kdbench.methods.common.surgery import replace_modules

CoefficientInit = Callable[[int], torch.Tensor]


class GatedBatchNorm(nn.Module):
    """``bn(x) * coeff`` per channel; ``source`` names the layer whose output ``bn`` reads."""

    def __init__(self, bn: _BatchNorm, coeff: nn.Parameter, source: str):
        super().__init__()
        self.bn = bn
        self.coeff = coeff  # shared by every gate of one coupling group
        self.source = source

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(x)
        return y * self.coeff.view(1, -1, *([1] * (y.dim() - 2)))


def batchnorm_after(model: nn.Module, example_inputs: torch.Tensor) -> dict[nn.Module, _BatchNorm]:
    """Each conv/linear layer whose output feeds exactly one module, a BN: layer -> that BN."""
    graph = dependency_graph(model, example_inputs)
    pairs = {}
    for module, node in graph.module2node.items():
        if isinstance(module, PRUNABLE) and len(node.outputs) == 1:
            consumer = node.outputs[0].module
            if isinstance(consumer, _BatchNorm):
                pairs[module] = consumer
    return pairs


def insert_gates(model: nn.Module, example_inputs: torch.Tensor,
                 init: CoefficientInit) -> list[nn.Parameter]:
    """Gate every output channel of every conv/linear layer except the classifier, in place.

    One coefficient vector (drawn by ``init(channels)``) per coupling group. Raises
    ``ValueError`` naming the first layer that is not directly followed by its own BN
    (e.g. a pre-activation network), since such a gate could not be folded exactly.
    """
    names = {m: n for n, m in model.named_modules()}
    bn_of = batchnorm_after(model, example_inputs)
    head = classifier_of(model)
    coefficients, gated = [], {}
    for group in coupled_layers(model, example_inputs):
        if head in group:
            continue
        missing = [layer for layer in group if layer not in bn_of]
        if missing:
            raise ValueError(f"layer {names[missing[0]]!r} ({type(missing[0]).__name__}) is not "
                             "followed directly by its own BatchNorm; channel gates need "
                             "conv-BN pairs (post-activation networks)")
        channels = bn_of[group[0]].num_features
        coeff = nn.Parameter(init(channels).to(example_inputs.device))
        coefficients.append(coeff)
        for layer in group:
            gated[bn_of[layer]] = (coeff, names[layer])
    replace_modules(model, lambda m: m in gated,
                    lambda name, bn: GatedBatchNorm(bn, *gated[bn]))
    return coefficients


def gate_groups(model: nn.Module) -> list[tuple[nn.Parameter, list[GatedBatchNorm]]]:
    """(coefficients, gates using them) per coupling group, in module order."""
    groups: dict[int, tuple[nn.Parameter, list[GatedBatchNorm]]] = {}
    for m in model.modules():
        if isinstance(m, GatedBatchNorm):
            groups.setdefault(id(m.coeff), (m.coeff, []))[1].append(m)
    return list(groups.values())


@torch.no_grad()
def channel_scores(model: nn.Module, coefficients: list[nn.Parameter],
                   initial: list[torch.Tensor]) -> list[torch.Tensor]:
    """How much each gated channel matters after training, one tensor per coefficient vector.

    ``|m·γ̄| / |m₀|``: the channel's scale once the gate is folded into its BN (m times the
    mean |γ| over the BNs that share the coefficient, network slimming's criterion on the
    exported network), divided by the coefficient's random initial draw m₀. Without the
    division, a few training steps leave the ranking mostly to the ±10 % of the draw; with
    it, an untrained coefficient contributes 1 and only what training did to m and γ
    counts. A cut coefficient (m = 0) scores 0.
    """
    gammas = {}
    for coeff, gates in gate_groups(model):
        scales = [g.bn.weight.detach().abs() if g.bn.weight is not None
                  else torch.ones_like(coeff.detach()) for g in gates]
        gammas[id(coeff)] = torch.stack(scales).mean(0)
    return [coeff.detach().abs() * gammas[id(coeff)] / m0.abs()
            for coeff, m0 in zip(coefficients, initial, strict=True)]


def export_gated(model: nn.Module, example_inputs: torch.Tensor) -> nn.Module:
    """Fold the gates into their BNs and remove channels whose coefficient is 0, in place.

    BN output times m equals BN with scale γ·m and shift β·m, so folding is exact; a
    channel with m = 0 then outputs exactly 0 and removing it changes nothing downstream.
    """
    keep = {}
    for coeff, gates in gate_groups(model):
        kept = torch.nonzero(coeff.detach()).flatten().tolist()
        if not kept:
            raise ValueError(f"every channel of the group of {gates[0].source!r} is cut; "
                             "keep at least one")
        keep[gates[0].source] = kept
        with torch.no_grad():
            for gate in gates:
                gate.bn.weight.mul_(coeff)
                gate.bn.bias.mul_(coeff)
    replace_modules(model, lambda m: isinstance(m, GatedBatchNorm), lambda name, gate: gate.bn)
    keep_channels(model, example_inputs,
                  {model.get_submodule(source): kept for source, kept in keep.items()})
    return model


class _ReLUOpenAtZero(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * (x >= 0).to(grad.dtype)


class ReLUOpenAtZero(nn.Module):
    """ReLU whose backward passes the gradient at exactly 0 (subgradient 1 instead of 0).

    The forward is ReLU's. A gated channel with m = 0 feeds exactly 0 into its ReLU, where
    ``nn.ReLU``'s subgradient 0 would freeze m at 0 for good; with this one the coefficient
    keeps a gradient and a cut channel can regrow.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ReLUOpenAtZero.apply(x)


def open_relus(model: nn.Module) -> int:
    """Swap every ``nn.ReLU`` for ``ReLUOpenAtZero`` (in place); returns how many."""
    return replace_modules(model, lambda m: type(m) is nn.ReLU, lambda name, m: ReLUOpenAtZero())


def close_relus(model: nn.Module) -> int:
    """Swap every ``ReLUOpenAtZero`` back to ``nn.ReLU`` (in place); returns how many."""
    return replace_modules(model, lambda m: isinstance(m, ReLUOpenAtZero),
                           lambda name, m: nn.ReLU())
