"""Genotypes: the discrete architecture a search yields, its derivation and (de)serialisation.

A cell has 2 input nodes (the two previous cells' outputs, indices 0 and 1) and ``steps``
intermediate nodes (indices 2..); node ``2 + i`` sums two ops, each applied to an earlier
node. ``normal``/``reduce`` list ``(op, input)`` pairs, two per intermediate node, in node
order; ``*_concat`` are the nodes concatenated into the cell output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kdbench.benchmarks.errors import ConfigError
from kdbench.reid.nas.ops import OPS

Gene = tuple[tuple[str, int], ...]


def num_edges(steps: int) -> int:
    """Edges of a cell: node 2+i has 2+i incoming candidates."""
    return sum(2 + i for i in range(steps))


@dataclass(frozen=True)
class Genotype:
    normal: Gene
    normal_concat: tuple[int, ...]
    reduce: Gene
    reduce_concat: tuple[int, ...]

    def __post_init__(self) -> None:
        for kind in ("normal", "reduce"):
            _check_gene(getattr(self, kind), getattr(self, f"{kind}_concat"), kind)

    @property
    def steps(self) -> int:
        return len(self.normal) // 2

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (what a run record stores)."""
        return {"normal": [list(g) for g in self.normal], "normal_concat": list(self.normal_concat),
                "reduce": [list(g) for g in self.reduce], "reduce_concat": list(self.reduce_concat)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Genotype:
        """Rebuild from ``to_dict``'s output (e.g. a record's extras); validates it."""
        try:
            return cls(
                normal=tuple((str(op), int(i)) for op, i in data["normal"]),
                normal_concat=tuple(int(i) for i in data["normal_concat"]),
                reduce=tuple((str(op), int(i)) for op, i in data["reduce"]),
                reduce_concat=tuple(int(i) for i in data["reduce_concat"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not a genotype (keys normal, normal_concat, reduce, "
                              f"reduce_concat with [op, input] pairs): {exc}") from exc


def _check_gene(gene: Gene, concat: tuple[int, ...], kind: str) -> None:
    steps = len(gene) // 2
    if not gene or len(gene) % 2:
        raise ConfigError(f"{kind} cell: need two (op, input) pairs per node; got {len(gene)}")
    for pos, (op, inp) in enumerate(gene):
        node = 2 + pos // 2
        if op not in OPS or op == "none":
            raise ConfigError(f"{kind} cell node {node}: op {op!r} is not a derivable op "
                              f"(known: {', '.join(o for o in OPS if o != 'none')})")
        if not 0 <= inp < node:
            raise ConfigError(f"{kind} cell node {node}: input {inp} must be an earlier node "
                              f"(0..{node - 1})")
    if not concat or any(not 2 <= i < 2 + steps for i in concat):
        raise ConfigError(f"{kind}_concat {list(concat)} must name intermediate nodes "
                          f"2..{1 + steps}")


def _derive_cell(weights: torch.Tensor, ops: tuple[str, ...], steps: int) -> Gene:
    """Per node: the 2 incoming edges with the strongest non-``none`` op, and that op."""
    real = [i for i, o in enumerate(ops) if o != "none"]
    gene: list[tuple[str, int]] = []
    start = 0
    for node in range(steps):
        n_in = 2 + node
        w = weights[start:start + n_in, real]  # [inputs, real ops]
        strength, best = w.max(dim=1)
        # Stable ranking: on equal strength the earlier input wins.
        chosen = sorted(torch.argsort(strength, descending=True, stable=True)[:2].tolist())
        gene += [(ops[real[int(best[j])]], j) for j in chosen]
        start += n_in
    return tuple(gene)


def derive_genotype(normal: torch.Tensor, reduce: torch.Tensor, ops: tuple[str, ...],
                    steps: int) -> Genotype:
    """DARTS discretisation of the architecture weights (softmax over ops, [edges, ops])."""
    concat = tuple(range(2, 2 + steps))
    return Genotype(_derive_cell(normal.detach().cpu(), ops, steps), concat,
                    _derive_cell(reduce.detach().cpu(), ops, steps), concat)
