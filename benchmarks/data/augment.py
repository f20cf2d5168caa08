"""Batched, device-side CIFAR augmentation for uint8 image tensors [N, C, H, W].

The standard recipe (random crop with zero padding 4, horizontal flip p=0.5) runs on whole
batches: one pad and one gather with per-sample offsets, the flip folded into the gather's
column index, normalisation as one fused multiply-add. Randomness comes only from the
``torch.Generator`` passed in, so a seed fixes every pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

CIFAR_PADDING = 4


class CropFlip(NamedTuple):
    """Per-sample augmentation parameters."""

    offsets: torch.Tensor  # int64 [N, 2]: (top, left) of the window in the padded image
    flip: torch.Tensor  # bool [N]: mirror left-right


def sample_crop_flip(
    n: int,
    *,
    padding: int = CIFAR_PADDING,
    flip_p: float = 0.5,
    generator: torch.Generator | None = None,
) -> CropFlip:
    """Draw crop offsets uniformly in [0, 2*padding] and flips with probability ``flip_p``."""
    device = generator.device if generator is not None else torch.device("cpu")
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator, device=device)
    flip = torch.rand(n, generator=generator, device=device) < flip_p
    return CropFlip(offsets, flip)


def crop_flip(
    images: torch.Tensor,
    offsets: torch.Tensor,
    flip: torch.Tensor,
    padding: int = CIFAR_PADDING,
) -> torch.Tensor:
    """Zero-pad by ``padding``, cut the HxW window at ``offsets`` and mirror where ``flip``.

    Output image i is ``pad(images[i])[:, top:top+H, left:left+W]``, flipped left-right
    when ``flip[i]``; computed for the whole batch with one gather.
    """
    n, c, h, w = images.shape
    device = images.device
    offsets, flip = offsets.to(device), flip.to(device)
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = offsets[:, :1] + torch.arange(h, device=device)  # [N, H]
    cols = torch.arange(w, device=device).expand(n, w)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + offsets[:, 1:]  # [N, W]
    flat = rows[:, :, None] * (w + 2 * padding) + cols[:, None, :]  # [N, H, W] in padded HW
    index = flat.view(n, 1, h * w).expand(n, c, h * w)
    return padded.flatten(2).gather(2, index).view(n, c, h, w)


def random_crop_flip(
    images: torch.Tensor,
    *,
    padding: int = CIFAR_PADDING,
    flip_p: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The standard CIFAR augmentation of a uint8 batch with freshly drawn parameters."""
    params = sample_crop_flip(len(images), padding=padding, flip_p=flip_p, generator=generator)
    return crop_flip(images, params.offsets, params.flip, padding)


def normalize_coefficients(
    mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) [C, 1, 1] such that ``x * scale + shift == (x / 255 - mean) / std``."""
    mean_t = torch.tensor(mean, dtype=torch.float64).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float64).view(-1, 1, 1)
    scale, shift = 1 / (255 * std_t), -mean_t / std_t
    return scale.to(device, torch.float32), shift.to(device, torch.float32)


def normalize(images: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """uint8 -> normalised float32 in one fused multiply-add (keeps the memory format)."""
    return torch.addcmul(shift, images, scale)
