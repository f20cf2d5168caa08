"""Proximal operators of sparsity regularisers, applied after an optimiser step.

A proximal-gradient step takes the plain (sub)gradient step on the smooth loss, ``v = w −
η·g``, then ``w = prox_{ηλΩ}(v)``. Unlike adding ``λ·sign(w)`` to the gradient, the prox
produces exact zeros, and it needs no auxiliary copies of the weights (ADMM keeps two).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from kdbench.methods.common.pruning import ChannelGroup


def soft_threshold(v: torch.Tensor, threshold: float) -> torch.Tensor:
    """prox of ``threshold·‖·‖₁``: ``sign(v)·max(|v| − threshold, 0)``."""
    return v.sign() * (v.abs() - threshold).clamp(min=0)


def group_scale(norms: torch.Tensor, threshold: float) -> torch.Tensor:
    """Group-lasso shrink factors ``max(0, 1 − threshold/‖v_g‖)`` (0 where ‖v_g‖ = 0)."""
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    return torch.where(norms > 0, (1 - threshold / safe).clamp(min=0), torch.zeros_like(norms))


def group_soft_threshold(rows: torch.Tensor, threshold: float) -> torch.Tensor:
    """prox of ``threshold·Σ_g ‖v_g‖₂`` with one group per row of ``rows``.

    Row ``g`` becomes zero exactly when ``‖v_g‖₂ ≤ threshold`` and is otherwise shrunk
    towards zero by ``threshold`` in norm.
    """
    flat = rows.reshape(rows.shape[0], -1)
    return (flat * group_scale(flat.norm(dim=1), threshold)[:, None]).reshape(rows.shape)


@torch.no_grad()
def capped_threshold(magnitudes: torch.Tensor, threshold: float, max_zeros: int) -> float:
    """``threshold``, lowered where needed so that soft-thresholding ``magnitudes`` (entry
    norms or |w|; an entry becomes zero iff it is <= the threshold) zeroes at most
    ``max_zeros`` of them: just below the (max_zeros + 1)-th smallest magnitude."""
    flat = magnitudes.flatten()
    if max_zeros >= flat.numel():
        return threshold
    limit = float(flat.kthvalue(max(0, max_zeros) + 1).values)
    return min(threshold, limit * (1 - 1e-6))


@torch.no_grad()
def prox_l1_(tensors: Iterable[torch.Tensor], threshold: float) -> None:
    """Soft-threshold every element of ``tensors`` in place."""
    for t in tensors:
        t.copy_(soft_threshold(t, threshold))


@torch.no_grad()
def prox_group_(groups: Sequence[ChannelGroup], threshold: float) -> None:
    """Group-lasso prox in place, one group per channel of each ``ChannelGroup``.

    A channel's group is everything indexed by it (``channel_tensors``: the filters of all
    coupled layers, biases, BN scale and shift), so a channel that reaches zero outputs
    zero and can be removed physically without changing the network.
    """
    for group in groups:
        scale = group_scale(group.squared_norms().sqrt(), threshold)
        for t in group.channel_tensors():
            t.mul_(scale.to(t.dtype).view(-1, *([1] * (t.dim() - 1))))


@torch.no_grad()
def l1_sparsity(tensors: Iterable[torch.Tensor]) -> float:
    """Fraction of exact zeros over ``tensors``."""
    tensors = list(tensors)
    total = sum(t.numel() for t in tensors)
    zeros = sum(int((t == 0).sum()) for t in tensors)
    return zeros / max(1, total)


@torch.no_grad()
def group_sparsity(groups: Sequence[ChannelGroup]) -> float:
    """Fraction of channels, over ``groups``, whose whole group is exactly zero."""
    total = sum(g.channels for g in groups)
    zeros = sum(int((g.squared_norms() == 0).sum()) for g in groups)
    return zeros / max(1, total)
