"""Light Multi-segment Activation (LMA; Xu et al., AAAI 2020, arXiv 1907.06870) as a module.

A layer-wise piecewise-linear activation: the interval ``mean ± 3·std`` of the layer's input
(statistics over the whole tensor: batch, channels and positions) is cut into K equal
segments, values outside it belong to the first/last segment, and segment k computes
``(a_k + a0_k)·x + b_k``. ``a`` and ``b`` are 2K learnable scalars shared by all channels;
``a0`` is a fixed slope offset (0 on the lower half of the segments, 1 on the upper half),
so at initialisation LMA is a ReLU-like step at the mean. Training uses the batch
statistics and updates running ones (momentum 0.99, as in the authors' code); evaluation
uses the running ones, so eval output depends on x alone. Unlike the authors' code, the
running statistics are bias-corrected (as Adam's moments, Kingma & Ba, ICLR 2015, Sec. 3):
their zero start and no correction leave them at (1 - 0.99^t) of the true value after t
steps, which is harmless at the paper's 200 epochs but put every segment edge of a
240-step digits run at 0.88x its training position (eval top-1 61 % against 94 % with the
statistics recomputed on training batches).

Two implementations give the same output:

- ``naive``: the authors' formulation, ``floor((x - m + 3s) / step)`` clamped to [0, K-1]
  as int64, two gathers, then a multiply and an add.
- ``fused`` (default): the segment index in two in-place passes (``(x - lo) · 1/step``
  clamped, then truncated to int64: truncation equals floor after clamping at 0), two
  ``torch.take`` gathers (any shape and memory layout, e.g. channels_last on CUDA) and one
  fused multiply-add (``addcmul``). In training its backward is written out
  (``SegmentAffine``): the 2K parameter gradients are per-segment sums, computed by
  ``torch.bincount`` in one pass, where autograd's gather backward would accumulate a
  million elements into K slots one at a time (measured ~10x slower on CPU).

``torch.bucketize`` over the K-1 segment edges is correct too but measured slower than
both on CPU (a binary search per element); ``benchmarks/perf/lma_activation.py`` prints
the per-element costs of all three next to ReLU.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from annotated_types import Interval
from torch import nn

Implementation = Literal["fused", "naive"]
# The running statistics' EMA momentum; its settings are checked where they are declared
# (``LMAMethod.Config``), the layer takes them as they come.
Momentum = Annotated[float, Interval(ge=0, lt=1)]
SPAN_STDS = 3.0  # segments tile [mean - 3 std, mean + 3 std]
_MIN_STD = 1e-12  # a constant input has std 0; keep the segment width finite


def slope_offsets(num_segments: int) -> torch.Tensor:
    """The fixed slopes a0: 0 for the lower K//2 segments, 1 for the rest (K=1: identity)."""
    lower = num_segments // 2
    return torch.tensor([0.0] * lower + [1.0] * (num_segments - lower))


class SegmentAffine(torch.autograd.Function):
    """``intercepts[index] + slopes[index] · x`` with per-segment sums as parameter grads."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, index: torch.Tensor, slopes: torch.Tensor,
                intercepts: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, index, slopes)
        return torch.addcmul(torch.take(intercepts, index), torch.take(slopes, index), x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, index, slopes = ctx.saved_tensors
        k = slopes.numel()
        flat_index = index.reshape(-1)
        grad_x = grad * torch.take(slopes, index) if ctx.needs_input_grad[0] else None
        grad_slopes = torch.bincount(flat_index, (grad * x).reshape(-1), minlength=k) \
            .to(slopes.dtype) if ctx.needs_input_grad[2] else None
        grad_intercepts = torch.bincount(flat_index, grad.reshape(-1), minlength=k) \
            .to(slopes.dtype) if ctx.needs_input_grad[3] else None
        return grad_x, None, grad_slopes, grad_intercepts


class LMA(nn.Module):
    """Piecewise-linear activation with K segments over the input's mean ± 3 std."""

    def __init__(self, num_segments: int = 8, momentum: float = 0.99,
                 impl: Implementation = "fused"):
        super().__init__()
        self.num_segments = num_segments
        self.momentum = momentum
        self.impl = impl
        self.slopes = nn.Parameter(torch.zeros(num_segments))  # a, learned
        self.intercepts = nn.Parameter(torch.zeros(num_segments))  # b, learned
        self.register_buffer("slope_offsets", slope_offsets(num_segments))
        self.register_buffer("running_mean", torch.zeros(()))
        self.register_buffer("running_std", torch.zeros(()))
        # Batches averaged into the running statistics, for their bias correction.
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        return f"num_segments={self.num_segments}, momentum={self.momentum}, impl={self.impl!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._statistics(x)
        slopes = self.slopes + self.slope_offsets
        if self.impl == "naive":
            return self._naive(x, mean, std, slopes)
        return self._fused(x, mean, std, slopes)

    def _statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch statistics in training (and update the running ones), running ones in eval."""
        if not self.training:
            return self.running_mean, self.running_std
        flat = x.detach()
        mean, std = flat.mean(), flat.std()
        with torch.no_grad():
            # The running values are kept bias-corrected: the EMA started at 0 divided by
            # 1 - momentum^t, which as an update is a lerp with weight
            # (1 - momentum) / (1 - momentum^t) (1 at the first batch, 1 - momentum later).
            self.num_batches_tracked.add_(1)
            t = self.num_batches_tracked.to(self.running_mean.dtype)
            weight = (1.0 - self.momentum) / (1.0 - self.momentum ** t)
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), weight)
            self.running_std.lerp_(std.to(self.running_std.dtype), weight)
        return mean, std

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A state saved before the counter existed holds settled statistics: load them as
        # they are, with the counter at a count where the correction is 1.
        key = prefix + "num_batches_tracked"
        if key not in state_dict:
            state_dict[key] = torch.tensor(10**6, dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def segment_index(self, x: torch.Tensor, mean: torch.Tensor,
                      std: torch.Tensor) -> torch.Tensor:
        """Segment of every element (int64, same shape as x); NaN inputs go to segment 0."""
        std = std.clamp_min(_MIN_STD)
        lower = mean - SPAN_STDS * std
        inv_step = self.num_segments / (2 * SPAN_STDS * std)
        position = x.detach().sub(lower).mul_(inv_step)
        # A NaN would become an out-of-range index; as 0 it stays NaN in the output instead,
        # where the training loop's finite-loss check reports it.
        position.clamp_(0, self.num_segments - 1).nan_to_num_(nan=0.0)
        return position.to(torch.int64)

    def edges(self) -> torch.Tensor:
        """The K-1 inner segment boundaries of the running statistics (eval mode)."""
        std = self.running_std.clamp_min(_MIN_STD)
        lower = self.running_mean - SPAN_STDS * std
        step = 2 * SPAN_STDS * std / self.num_segments
        return lower + step * torch.arange(1, self.num_segments, device=std.device)

    def _fused(self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
               slopes: torch.Tensor) -> torch.Tensor:
        # torch.take gathers by element for any shape and memory layout (channels_last on
        # CUDA too), so no flattening view is needed.
        index = self.segment_index(x, mean, std)
        if torch.is_grad_enabled():
            return SegmentAffine.apply(x, index, slopes, self.intercepts)
        return torch.addcmul(torch.take(self.intercepts, index), torch.take(slopes, index), x)

    def _naive(self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
               slopes: torch.Tensor) -> torch.Tensor:
        step = 2 * SPAN_STDS * std.clamp_min(_MIN_STD) / self.num_segments
        index = torch.clamp(torch.floor((x.detach() - mean + SPAN_STDS * std) / step),
                            0, self.num_segments - 1).long()
        slope = torch.take(slopes, index)
        intercept = torch.take(self.intercepts, index)
        return slope * x + intercept
