"""MACs of a model, counted by PyTorch's own FlopCounterMode on a meta-device copy.

MACs are the canonical integer (conv, linear/matmul and attention only); FLOPs = 2 x MACs.
Counting on meta tensors does no real compute, works in every grad mode and avoids the
fast paths (fused MHA) and the CPU-SDPA kernel that FlopCounterMode counts as zero.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _cpu_sdpa_mapping() -> dict:
    # torch 2.13-2.14 has no formula for the CPU flash-attention kernel (pytorch#195460);
    # only reached when counting falls back to real CPU tensors.
    aten = torch.ops.aten
    if not hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        return {}

    def sdpa_cpu(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(q_shape, k_shape, v_shape)  # FlopCounterMode passes shapes

    return {aten._scaled_dot_product_flash_attention_for_cpu: sdpa_cpu}


def count_flops(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> int:
    """FLOPs (= 2 x MACs) of one forward pass on ``example_inputs``.

    Counts on a meta copy; a model whose forward needs real values (``.item()``, data-dependent
    branching) is counted on a real CPU copy with grad enabled instead (meta tensors hold no
    values to branch on).
    """
    try:
        return _count_on(model, example_inputs, torch.device("meta"))
    except RuntimeError:
        # grad enabled keeps nn.MultiheadAttention off its uncounted fused fast path
        with torch.enable_grad():
            return _count_on(model, example_inputs, torch.device("cpu"))


def _count_on(
    model: nn.Module, example_inputs: Sequence[torch.Tensor], device: torch.device
) -> int:
    copy_ = copy.deepcopy(model).to(device).eval()
    inputs = [t.detach().to(device) for t in example_inputs]
    with FlopCounterMode(display=False, custom_mapping=_cpu_sdpa_mapping()) as counter:
        copy_(*inputs)
    return int(counter.get_total_flops())


def count_macs(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> int:
    """Multiply-accumulates of one forward pass (the leaderboard's canonical cost figure)."""
    flops = count_flops(model, example_inputs)
    assert flops % 2 == 0, "FlopCounterMode counts 2 FLOPs per MAC"
    return flops // 2
