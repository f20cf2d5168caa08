"""The cell networks: the DARTS supernet searched by KDAS-ReID and the derived network.

Both share one macro structure (``MacroSpec``): a stem (``stem_downsample`` stride-2 convs,
0 = one stride-1 conv as DARTS on CIFAR), ``layers`` cells with reduction cells (channels x2,
resolution /2) at 1/3 and 2/3 of the depth (the last cell for 2-cell networks), global
average pooling to the embedding and a linear identity classifier. Like every ReID model,
``embed(x)`` gives the features and ``forward(x)`` the logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.benchmarks.config import from_mapping
from kdbench.benchmarks.errors import ConfigError
from kdbench.reid.nas.genotype import Genotype, derive_genotype, num_edges
from kdbench.reid.nas.ops import FactorizedReduce, ReLUConvBN, build_op, check_ops


@dataclass(frozen=True)
class MacroSpec:
    """Width, depth and stem of a cell network."""

    channels: int
    layers: int
    stem_downsample: int = 0
    stem_multiplier: int = 3

    def __post_init__(self) -> None:
        if self.channels < 2 or self.layers < 2 or self.stem_downsample < 0:
            raise ConfigError(f"need channels >= 2, layers >= 2 (one normal and one reduction "
                              f"cell) and stem_downsample >= 0; got {self}")

    def reductions(self) -> set[int]:
        """Indices of the reduction cells."""
        if self.layers < 3:
            return {self.layers - 1}
        return {self.layers // 3, 2 * self.layers // 3}


# The stem brings inputs down to at most CELL_HEIGHT rows with at most MAX_STEM_DOWNSAMPLE
# stride-2 convs: DARTS on CIFAR feeds its cells the full 32x32 (a stride-1 stem); the ReID
# stem (two stride-2 convs) takes Market-1501's 256x128 to 64x32 (and 64x32 smoke inputs,
# with one, to 32x16).
CELL_HEIGHT = 32
MAX_STEM_DOWNSAMPLE = 2


def auto_stem_downsample(height: int) -> int:
    """Stride-2 stem convs for inputs ``height`` rows high: halve while the cells would see
    more than ``CELL_HEIGHT`` rows, at most ``MAX_STEM_DOWNSAMPLE`` times (256 and 128 -> 2,
    64 -> 1, 32 and below -> 0, i.e. one stride-1 conv)."""
    downsample = 0
    while downsample < MAX_STEM_DOWNSAMPLE and height > CELL_HEIGHT:
        height = -(-height // 2)
        downsample += 1
    return downsample


def make_stem(channels: int, downsample: int) -> nn.Sequential:
    """``downsample`` stride-2 3x3 conv-BN layers (ReLU between), or one stride-1 conv-BN."""
    layers: list[nn.Module] = []
    c_in = 3
    for i in range(max(1, downsample)):
        if i:
            layers.append(nn.ReLU())
        layers += [nn.Conv2d(c_in, channels, 3, 2 if downsample else 1, 1, bias=False),
                   nn.BatchNorm2d(channels)]
        c_in = channels
    return nn.Sequential(*layers)


class _Cell(nn.Module):
    """The two input nodes: the previous cells' outputs brought to ``c`` channels."""

    multiplier: int

    def __init__(self, c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool,
                 affine: bool):
        super().__init__()
        self.reduction = reduction
        # After a reduction cell s0 has twice s1's resolution: reduce it to match.
        self.pre0 = FactorizedReduce(c_pp, c, affine) if reduction_prev \
            else ReLUConvBN(c_pp, c, 1, 1, 0, affine)
        self.pre1 = ReLUConvBN(c_p, c, 1, 1, 0, affine)

    def stride(self, node_input: int) -> int:
        return 2 if self.reduction and node_input < 2 else 1


class MixedOp(nn.Module):
    """All candidate ops on one edge, summed with the edge's architecture weights."""

    def __init__(self, ops: tuple[str, ...], channels: int, stride: int):
        super().__init__()
        self.ops = nn.ModuleList(build_op(o, channels, stride, affine=False) for o in ops)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return sum(w * op(x) for w, op in zip(weights, self.ops, strict=True))


class SearchCell(_Cell):
    def __init__(self, ops: tuple[str, ...], steps: int, c_pp: int, c_p: int, c: int,
                 reduction: bool, reduction_prev: bool):
        super().__init__(c_pp, c_p, c, reduction, reduction_prev, affine=False)
        self.steps = self.multiplier = steps
        self.edges = nn.ModuleList(MixedOp(ops, c, self.stride(j))
                                   for i in range(steps) for j in range(2 + i))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        start = 0
        for _ in range(self.steps):
            states.append(sum(self.edges[start + j](h, weights[start + j])
                              for j, h in enumerate(states)))
            start += len(states) - 1
        return torch.cat(states[-self.multiplier:], dim=1)


class DerivedCell(_Cell):
    def __init__(self, genotype: Genotype, c_pp: int, c_p: int, c: int, reduction: bool,
                 reduction_prev: bool):
        super().__init__(c_pp, c_p, c, reduction, reduction_prev, affine=True)
        gene, concat = (genotype.reduce, genotype.reduce_concat) if reduction \
            else (genotype.normal, genotype.normal_concat)
        self.inputs = [i for _, i in gene]
        self.concat = list(concat)
        self.multiplier = len(concat)
        self.ops = nn.ModuleList(build_op(name, c, self.stride(i)) for name, i in gene)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        for a in range(0, len(self.ops), 2):
            states.append(self.ops[a](states[self.inputs[a]])
                          + self.ops[a + 1](states[self.inputs[a + 1]]))
        return torch.cat([states[i] for i in self.concat], dim=1)


CellFactory = Callable[[int, int, int, bool, bool], _Cell]  # c_pp, c_p, c, red, red_prev


class CellNetwork(nn.Module):
    """Stem, cells, global pooling (the embedding) and the identity classifier."""

    def __init__(self, spec: MacroSpec, num_classes: int, make_cell: CellFactory):
        super().__init__()
        c = spec.channels
        c_stem = spec.stem_multiplier * c
        self.stem = make_stem(c_stem, spec.stem_downsample)
        c_pp, c_p, reduction_prev = c_stem, c_stem, False
        cells = []
        for i in range(spec.layers):
            reduction = i in spec.reductions()
            c = c * 2 if reduction else c
            cells.append(make_cell(c_pp, c_p, c, reduction, reduction_prev))
            reduction_prev = reduction
            c_pp, c_p = c_p, cells[-1].multiplier * c
        self.cells = nn.ModuleList(cells)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)

    def run_cell(self, cell: nn.Module, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        return cell(s0, s1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, self.run_cell(cell, s0, s1)
        return self.pool(s1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class Supernet(CellNetwork):
    """Every edge a mixed op; architecture weights shared by all normal / all reduction cells."""

    def __init__(self, spec: MacroSpec, num_classes: int, ops: tuple[str, ...], steps: int = 4):
        check_ops(ops)
        super().__init__(spec, num_classes,
                         lambda c_pp, c_p, c, red, red_prev: SearchCell(ops, steps, c_pp, c_p, c,
                                                                        red, red_prev))
        self.ops, self.steps = tuple(ops), steps
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(num_edges(steps), len(ops)))
        self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(num_edges(steps), len(ops)))

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha_normal, self.alpha_reduce]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def arch_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax over the ops of every edge: (normal, reduce), each [edges, ops]."""
        return F.softmax(self.alpha_normal, dim=-1), F.softmax(self.alpha_reduce, dim=-1)

    def run_cell(self, cell: nn.Module, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        normal, reduce = self.arch_weights()
        return cell(s0, s1, reduce if cell.reduction else normal)

    def genotype(self) -> Genotype:
        return derive_genotype(*self.arch_weights(), self.ops, self.steps)


class DerivedNetwork(CellNetwork):
    """The discrete network of a genotype, trained from scratch after the search."""

    def __init__(self, spec: MacroSpec, genotype: Genotype, num_classes: int):
        super().__init__(spec, num_classes,
                         lambda c_pp, c_p, c, red, red_prev: DerivedCell(genotype, c_pp, c_p, c,
                                                                         red, red_prev))
        self.spec, self.genotype = spec, genotype

    def architecture(self) -> dict[str, Any]:
        """Everything needed to rebuild this network (``build_derived``), JSON-friendly."""
        return {"genotype": self.genotype.to_dict(), "macro": asdict(self.spec)}


def build_derived(architecture: dict[str, Any], num_classes: int) -> DerivedNetwork:
    """The network described by ``DerivedNetwork.architecture()`` (e.g. from a run record)."""
    if not {"genotype", "macro"} <= set(architecture):
        raise ConfigError(f"an architecture needs 'genotype' and 'macro'; got "
                          f"{sorted(architecture)}")
    spec = from_mapping(MacroSpec, architecture["macro"], "architecture.macro")
    return DerivedNetwork(spec, Genotype.from_dict(architecture["genotype"]), num_classes)
