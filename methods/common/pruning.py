"""Physical pruning, shared by every method that removes channels or weights.

Channels are removed through Torch-Pruning's dependency graph, which slices a conv's
output channels together with everything coupled to them (its BN, the next layer's input
channels, residual partners), so the result is a plain, smaller ``nn.Module``. Unstructured
sparsity is applied as zeros folded into the dense weights (no masks or hooks remain); it
saves no dense MACs or latency and methods must label such rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from kdbench.benchmarks.measure.params import evaluating

PRUNABLE = (nn.Conv2d, nn.Linear)


def out_channels(layer: nn.Module) -> int:
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


def _prune_fn(layer: nn.Module):
    return tp.prune_conv_out_channels if isinstance(layer, nn.Conv2d) \
        else tp.prune_linear_out_channels


def dependency_graph(model: nn.Module, example_inputs: torch.Tensor) -> tp.DependencyGraph:
    with evaluating(model):  # tracing runs a forward pass: BN statistics must not move
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


def uncoupled_layers(model: nn.Module, example_inputs: torch.Tensor) -> list[nn.Module]:
    """Conv/linear layers whose output channels couple to no other layer, classifier excluded.

    These can be pruned one by one without touching a residual sum: in a CIFAR ResNet the
    first conv of every residual block (what Li et al. 2017 prune), in a VGG every conv.
    """
    head = classifier_of(model)
    return [group[0] for group in coupled_layers(model, example_inputs)
            if len(group) == 1 and group[0] is not head]


def prune_inside(block: nn.Module, example_inputs: torch.Tensor, ratio: float) -> nn.Module:
    """L1-prune ``ratio`` of the channels of every coupling group inside a sub-network.

    ``block`` is pruned as if it stood alone, in place, output channels included. Channels
    tied to the block's *input* (an identity shortcut that adds the input to a conv's
    output) are kept, since removing them would mean changing whatever produces that input.
    Kept per group: ``int(C * (1 - ratio))`` channels (Torch-Pruning's rounding).
    """
    channels = example_inputs.shape[1]
    # A stand-in producer of the input: groups that reach it are exactly the input-tied ones.
    entry = nn.Conv2d(channels, channels, 1).to(example_inputs.device)
    with torch.enable_grad():  # the dependency graph is traced through autograd
        l1_filter_prune(nn.Sequential(entry, block), example_inputs, ratio,
                        ignored_layers=[entry])
    return block


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
    with evaluating(model):  # the pruner traces a forward pass: BN statistics must not move
        pruner = tp.pruner.MetaPruner(
            model, example_inputs, importance=FilterL1Importance(),
            pruning_ratio=ratio, pruning_ratio_dict=dict(ratio_dict or {}),
            ignored_layers=list(ignored_layers), round_to=round_to,
            global_pruning=global_pruning,
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


def prunable_layers(model: nn.Module) -> list[nn.Module]:
    """Every conv/linear layer except the classifier: what sparsity methods may zero."""
    head = classifier_of(model)
    return [m for m in model.modules() if isinstance(m, PRUNABLE) and m is not head]


@dataclass(eq=False)
class ChannelGroup:
    """Output channels that can only be removed together, and everything indexed by them.

    ``layers`` produce the channels (one conv in a VGG; the stem, the block-final convs and
    the projection of a ResNet stage, whose outputs are summed), ``norms`` normalise them
    and ``consumers`` read them as input channels. Channel ``i`` is index ``i`` of every
    member: groups whose members map channels otherwise (concatenation) are refused.
    """

    name: str
    layers: list[nn.Module]
    norms: list[nn.Module]
    consumers: list[nn.Module]

    @property
    def channels(self) -> int:
        return out_channels(self.layers[0])

    def channel_tensors(self) -> list[torch.Tensor]:
        """The parameters indexed by these channels along dim 0: weights, biases, BN affine."""
        tensors = []
        for layer in self.layers:
            tensors += [layer.weight] + ([layer.bias] if layer.bias is not None else [])
        for norm in self.norms:
            tensors += [norm.weight, norm.bias] if norm.affine else []
        return tensors

    @torch.no_grad()
    def filter_l1(self) -> torch.Tensor:
        """Per channel, the L1 norm of its filters summed over the coupled layers."""
        return sum(layer.weight.detach().flatten(1).abs().sum(1).float()
                   for layer in self.layers)

    @torch.no_grad()
    def squared_norms(self) -> torch.Tensor:
        """Per channel, the squared L2 norm of everything in ``channel_tensors``."""
        return sum(t.detach().reshape(t.shape[0], -1).float().pow(2).sum(1)
                   for t in self.channel_tensors())

    def norm_tensors(self) -> list[torch.Tensor]:
        """The normalisation layers' scale and shift: what sets each channel's output when
        every producing layer is followed by a norm (its filters' scale then cancels)."""
        return [t for norm in self.norms if norm.affine for t in (norm.weight, norm.bias)]

    @torch.no_grad()
    def norm_rms(self) -> torch.Tensor:
        """Per channel, the RMS of its normalisation scales and shifts."""
        tensors = self.norm_tensors()
        if not tensors:
            raise ValueError(f"channel group {self.name!r} has no affine normalisation layer")
        return (sum(t.detach().float().pow(2) for t in tensors) / len(tensors)).sqrt()

    @property
    def channel_size(self) -> int:
        """How many numbers one channel holds across ``channel_tensors``."""
        return sum(t[0].numel() for t in self.channel_tensors())

    @torch.no_grad()
    def rms(self) -> torch.Tensor:
        """Per channel, the RMS of everything in ``channel_tensors`` (norm / √size): channels
        of groups of different sizes become comparable."""
        return self.squared_norms().div(self.channel_size).sqrt()


def channel_groups(model: nn.Module, example_inputs: torch.Tensor, *,
                   exclude: Iterable[nn.Module] = ()) -> list[ChannelGroup]:
    """The model's channel groups (see ``ChannelGroup``), skipping any that holds a layer
    of ``exclude`` (pass the classifier: its outputs are the classes)."""
    frozen = [p for p in model.parameters() if not p.requires_grad]
    try:  # the graph is traced through autograd, which skips frozen parameters
        for p in frozen:
            p.requires_grad_(True)
        with torch.enable_grad():
            graph = dependency_graph(model, example_inputs)
    finally:
        for p in frozen:
            p.requires_grad_(False)
    names = {id(m): n for n, m in model.named_modules()}
    excluded = {id(m) for m in exclude}
    seen: set[int] = set()
    groups = []
    for layer in model.modules():
        if not isinstance(layer, PRUNABLE) or id(layer) in seen:
            continue
        members: dict[str, dict[int, nn.Module]] = {"layers": {}, "norms": {}, "consumers": {}}
        for dep, idxs in graph.get_pruning_group(layer, _prune_fn(layer), idxs=[0]):
            role = _role(dep.handler, dep.target.module)
            if role is None:
                continue
            if [int(i) for i in idxs] != [0]:
                raise ValueError(f"channel {idxs} of {names.get(id(dep.target.module))} is "
                                 f"coupled to channel 0 of {names[id(layer)]}: channels that "
                                 "are concatenated or shifted are not supported")
            members[role][id(dep.target.module)] = dep.target.module
        layers = list(members["layers"].values())
        seen.update(members["layers"])
        if excluded & set(members["layers"]):
            continue
        name = names[id(layers[0])] + (f"+{len(layers) - 1}" if len(layers) > 1 else "")
        groups.append(ChannelGroup(name, layers, list(members["norms"].values()),
                                   list(members["consumers"].values())))
    return groups


def _role(handler, module: nn.Module) -> str | None:
    if handler in (tp.prune_conv_out_channels, tp.prune_linear_out_channels) \
            and isinstance(module, PRUNABLE):
        return "layers"
    if handler == tp.prune_batchnorm_out_channels and isinstance(module, _BatchNorm):
        return "norms"
    if handler in (tp.prune_conv_in_channels, tp.prune_linear_in_channels) \
            and isinstance(module, PRUNABLE):
        return "consumers"
    return None


def kept_channel_count(channels: int, rate: float) -> int:
    """Channels left after pruning ``rate`` of ``channels``: ceil((1 − rate)·C), at least 1.

    The product is rounded to 6 decimals first, so float noise ((1 − 0.7)·10 =
    3.0000000000000004) cannot add a channel.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"pruning rate must be in [0, 1), got {rate}")
    return max(1, math.ceil(round((1.0 - rate) * channels, 6)))


def l1_kept_channels(group: ChannelGroup, rate: float) -> list[int]:
    """The ``kept_channel_count`` channels of ``group`` with the largest filter L1 norm."""
    k = kept_channel_count(group.channels, rate)
    return sorted(group.filter_l1().topk(k).indices.tolist())


def remove_zero_channels(model: nn.Module, example_inputs: torch.Tensor, *,
                         exclude: Iterable[nn.Module] = ()) -> int:
    """Physically remove every channel that is exactly zero in its whole group, in place.

    A channel goes only when all its ``channel_tensors`` (filters of every coupled layer,
    biases, BN scale and shift) are zero: then it outputs zero everywhere and removing it
    changes no output. A group keeps at least one channel. Returns the channels removed.
    """
    keep = {}
    for group in channel_groups(model, example_inputs, exclude=exclude):
        alive = (group.squared_norms() > 0).nonzero().flatten().tolist()
        if len(alive) < group.channels:
            keep[group.layers[0]] = alive or [int(group.filter_l1().argmax())]
    removed = sum(out_channels(layer) - len(kept) for layer, kept in keep.items())
    keep_channels(model, example_inputs, keep)
    return removed


def analytic_macs(model: nn.Module, example_inputs: torch.Tensor,
                  kept: Mapping[ChannelGroup, int]) -> int:
    """Conv/linear MACs that keeping ``kept[group]`` channels of each group implies.

    Computed from the unpruned model's layer shapes (k_h·k_w·C_in·C_out·H_out·W_out per
    conv, depthwise: k_h·k_w·C_out·H_out·W_out; C_in·C_out per linear row), so it checks
    the physical export and the MAC counter independently.
    """
    out_kept = {id(layer): n for group, n in kept.items() for layer in group.layers}
    in_kept = {id(layer): n for group, n in kept.items() for layer in group.consumers}
    sizes: dict[int, int] = {}  # output positions per layer (H·W, or rows for a linear)

    def record(layer: nn.Module, _inputs, output: torch.Tensor) -> None:
        sizes[id(layer)] = output[0].numel() // output.shape[1]

    layers = [m for m in model.modules() if isinstance(m, PRUNABLE)]
    handles = [m.register_forward_hook(record) for m in layers]
    try:
        with torch.no_grad(), evaluating(model):
            model(example_inputs[:1])
    finally:
        for handle in handles:
            handle.remove()
    total = 0
    for layer in layers:
        c_out = out_kept.get(id(layer), out_channels(layer))
        c_in = in_kept.get(id(layer), layer.in_channels if isinstance(layer, nn.Conv2d)
                           else layer.in_features)
        if isinstance(layer, nn.Conv2d):
            if layer.groups != 1 and layer.groups != layer.in_channels:
                raise ValueError(f"grouped conv {layer} (groups={layer.groups}) is not supported")
            per_output = layer.kernel_size[0] * layer.kernel_size[1] * (
                1 if layer.groups > 1 else c_in)
            total += per_output * c_out * sizes[id(layer)]
        else:
            total += c_in * c_out * sizes[id(layer)]
    return total
