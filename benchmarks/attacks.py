"""L∞ PGD (Madry et al. 2018) in [0, 1] pixel space, shared by the harness and by methods.

The loaders hand out normalised tensors and the zoo models contain no normalisation, but
ε is defined in pixel space (ε = 8/255 means eight grey levels). ``PixelSpace`` therefore
puts the normalisation inside the attacked model and ``to_pixels`` undoes it on the batch,
so the robust-accuracy evaluator and adversarial training use the very same attack.

The attack runs the model in eval mode (BatchNorm statistics must not absorb adversarial
batches) and takes gradients with respect to the input only: no parameter's ``.grad``
changes. Hand-written rather than taken from torchattacks: that package (last release
2023) draws its random start from the global RNG and switches the model's mode itself,
whereas the harness needs a seeded start and exact control of train/eval flags.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.benchmarks.measure.params import evaluating

AttackLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _channel_view(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)


class PixelSpace(nn.Module):
    """``model`` seen from [0, 1] pixel space: ``x01 -> model((x01 - mean) / std)``."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x01))

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] -> the normalised tensor the wrapped model expects."""
        return (x01 - self.mean.to(x01.device)) / self.std.to(x01.device)


def to_pixels(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo the loader's normalisation: ``x * std + mean``, clamped to [0, 1] (rounding)."""
    return (x * _channel_view(std, x) + _channel_view(mean, x)).clamp_(0.0, 1.0)


@dataclass(frozen=True)
class PGDConfig:
    """One L∞ PGD attack; ε and step are in [0, 1] pixel units."""

    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 10
    random_start: bool = True

    def __post_init__(self) -> None:
        if self.eps < 0 or self.step_size < 0 or self.steps < 0:
            raise ValueError(f"PGD needs eps, step_size and steps >= 0; got eps={self.eps}, "
                             f"step_size={self.step_size}, steps={self.steps}")


def pgd(
    model: nn.Module,
    x01: torch.Tensor,
    y: torch.Tensor,
    config: PGDConfig,
    *,
    loss_fn: AttackLoss = F.cross_entropy,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Adversarial examples for ``model`` (a pixel-space model, see ``PixelSpace``).

    Maximises ``loss_fn(model(x'), y)`` by signed-gradient ascent, projecting after every
    step onto the ε-ball around ``x01`` intersected with [0, 1]. The result is detached;
    ``x01`` must already lie in [0, 1]. With ε = 0 or no steps it returns ``x01`` exactly.
    """
    x01 = x01.detach()
    if config.eps == 0 or config.steps == 0:
        return x01.clone()
    low, high = (x01 - config.eps).clamp(min=0.0), (x01 + config.eps).clamp(max=1.0)
    x_adv = x01.clone()
    if config.random_start:
        noise = torch.rand(x01.shape, generator=generator, device=x01.device, dtype=x01.dtype)
        x_adv = torch.min(torch.max(x_adv + (2 * noise - 1) * config.eps, low), high)
    with evaluating(model), torch.enable_grad():
        for _ in range(config.steps):
            x_adv.requires_grad_(True)
            loss = loss_fn(model(x_adv).float(), y)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = torch.min(torch.max(x_adv.detach() + config.step_size * grad.sign(), low),
                              high)
    return x_adv.detach()


def seeded_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A generator on ``device`` for reproducible random starts."""
    return torch.Generator(device=torch.device(device)).manual_seed(seed)
