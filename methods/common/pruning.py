"""Physical pruning, shared by every method that removes channels or weights.

Channels are removed through Torch-Pruning's dependency graph, which slices a conv's
output channels together with everything coupled to them (its BN, the next layer's input
channels, residual partners), so the result is a plain, smaller ``nn.Module``. Unstructured
sparsity is applied as zeros folded into the dense weights (no masks or hooks remain); it
saves no dense MACs or latency and methods must label such rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
import torch_pruning as tp
from torch import nn

PRUNABLE = (nn.Conv2d, nn.Linear)


def out_channels(layer: nn.Module) -> int:
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


def _prune_fn(layer: nn.Module):
    return tp.prune_conv_out_channels if isinstance(layer, nn.Conv2d) \
        else tp.prune_linear_out_channels


def dependency_graph(model: nn.Module, example_inputs: torch.Tensor) -> tp.DependencyGraph:
    return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)


def keep_channels(model: nn.Module, example_inputs: torch.Tensor,
                  keep: Mapping[nn.Module, Sequence[int]]) -> nn.Module:
    """Physically keep only the listed output channels of each layer (in place).

    Coupled layers are sliced with each one. Give one layer per coupling group (e.g. one
    conv per ResNet stage for the residual channels): pruning a layer also prunes its
    coupled partners, whose own entries would then refer to removed indices.
    """
    graph = dependency_graph(model, example_inputs)
    for layer, kept in keep.items():
        kept = sorted(set(int(i) for i in kept))
        n = out_channels(layer)
        if not kept or kept[-1] >= n:
            raise ValueError(f"keep list for {layer} must be a non-empty subset of "
                             f"range({n}); got {kept[:5]}...")
        drop = [i for i in range(n) if i not in set(kept)]
        if not drop:
            continue
        group = graph.get_pruning_group(layer, _prune_fn(layer), idxs=drop)
        if not graph.check_pruning_group(group):
            raise ValueError(f"cannot remove channels {drop[:5]}... of {layer}: the "
                             "dependency graph refuses the group (it would empty a layer)")
        group.prune()
    return model


def coupled_layers(model: nn.Module, example_inputs: torch.Tensor,
                   layers: Iterable[nn.Module] | None = None) -> list[list[nn.Module]]:
    """Groups of conv/linear layers whose output channels must be pruned together."""
    graph = dependency_graph(model, example_inputs)
    candidates = [m for m in (layers or model.modules()) if isinstance(m, PRUNABLE)]
    seen: set[int] = set()
    groups = []
    for layer in candidates:
        if id(layer) in seen:
            continue
        group = graph.get_pruning_group(layer, _prune_fn(layer), idxs=[0])
        members = [dep.target.module for dep, _ in group
                   if dep.handler in (tp.prune_conv_out_channels, tp.prune_linear_out_channels)
                   and isinstance(dep.target.module, PRUNABLE)]
        members = list({id(m): m for m in members}.values())
        seen.update(id(m) for m in members)
        groups.append(members)
    return groups


class FilterL1Importance(tp.importance.Importance):
    """Li et al. 2017: a channel's importance is the L1 norm of its output filter.

    Only the filters that produce the channel count (not BN scales, not the next layer's
    input slices); where layers share a channel (residual coupling) their norms are summed.
    """

    def __call__(self, group: tp.dependency.Group) -> torch.Tensor:
        total: torch.Tensor | None = None
        for i, (dep, idxs) in enumerate(group):
            if dep.pruning_fn not in (tp.prune_conv_out_channels, tp.prune_linear_out_channels):
                continue
            root = torch.as_tensor(group[i].root_idxs)
            norms = dep.layer.weight.detach()[idxs].flatten(1).abs().sum(1).float()
            if total is None:
                total = torch.zeros(len(group[0].root_idxs))
            total.index_add_(0, root, norms.cpu())
        return total


def l1_filter_prune(
    model: nn.Module,
    example_inputs: torch.Tensor,
    ratio: float,
    *,
    ignored_layers: Sequence[nn.Module] = (),
    ratio_dict: Mapping[nn.Module, float] | None = None,
    round_to: int | None = None,
    global_pruning: bool = False,
) -> nn.Module:
    """L1-norm filter pruning (Li et al. 2017) with physical removal, in place.

    Importance of an output channel is the L1 norm of its filter, summed over the coupling
    group; ``ratio`` is the fraction of channels removed per group (``ratio_dict`` overrides
    it per layer). The classifier is never pruned: pass it in ``ignored_layers``.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"pruning ratio must be in [0, 1), got {ratio}")
    if ratio == 0.0 and not ratio_dict:
        return model
    pruner = tp.pruner.MetaPruner(
        model, example_inputs, importance=FilterL1Importance(),
        pruning_ratio=ratio, pruning_ratio_dict=dict(ratio_dict or {}),
        ignored_layers=list(ignored_layers), round_to=round_to, global_pruning=global_pruning,
    )
    pruner.step()
    return model


def classifier_of(model: nn.Module) -> nn.Module:
    """The last nn.Linear of a model (its classifier), which pruning must leave alone."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("model has no nn.Linear classifier")
    return linears[-1]


def magnitude_masks(model: nn.Module, sparsity: float, *,
                    layers: Sequence[nn.Module] | None = None) -> dict[nn.Module, torch.Tensor]:
    """Global magnitude masks: the ``sparsity`` fraction of smallest |w| over ``layers``.

    Default layers: every conv/linear except the classifier.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if layers is None:
        head = classifier_of(model)
        layers = [m for m in model.modules() if isinstance(m, PRUNABLE) and m is not head]
    weights = torch.cat([m.weight.detach().abs().flatten() for m in layers])
    k = int(sparsity * weights.numel())
    if k == 0:
        return {m: torch.ones_like(m.weight, dtype=torch.bool) for m in layers}
    threshold = weights.kthvalue(k).values
    return {m: m.weight.detach().abs() > threshold for m in layers}


@torch.no_grad()
def apply_masks(masks: Mapping[nn.Module, torch.Tensor]) -> None:
    """Zero the masked weights in place (folded: no mask tensors or hooks remain)."""
    for layer, mask in masks.items():
        layer.weight.mul_(mask.to(layer.weight.dtype))
