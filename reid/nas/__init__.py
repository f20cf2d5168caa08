"""KDAS-ReID's search space: candidate ops (with the part-aware module), the DARTS supernet,
genotypes and the derived network rebuilt from a genotype.

KDAS-ReID: Lei, Yang, Jiang & Chen, Algorithms 14(5):137, 2021 (the method is
``methods/kdas_reid.py``); DARTS: Liu et al., ICLR 2019.
"""

from kdbench.reid.nas.genotype import Genotype, derive_genotype, num_edges
from kdbench.reid.nas.networks import (
    DerivedNetwork,
    MacroSpec,
    MixedOp,
    Supernet,
    auto_stem_downsample,
    build_derived,
)
from kdbench.reid.nas.ops import OPS, PARTS, SEARCH_SPACE, PartAware, build_op, check_ops

__all__ = [
    "OPS",
    "PARTS",
    "SEARCH_SPACE",
    "DerivedNetwork",
    "Genotype",
    "MacroSpec",
    "MixedOp",
    "PartAware",
    "Supernet",
    "auto_stem_downsample",
    "build_derived",
    "build_op",
    "check_ops",
    "derive_genotype",
    "num_edges",
]
