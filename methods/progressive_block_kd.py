"""Progressive blockwise knowledge distillation (PBKD): the whole plugin.

Wang, Zhao, Li & Tan, "Progressive Blockwise Knowledge Distillation for Neural Network
Acceleration", IJCAI-18; Zhejiang Univ. patent (2018). The teacher is cut into blocks (VGG-16:
its five blocks between the pools); each block gets a randomly initialised student with the
same layers and receptive field but half the filters, plus a 1x1 conv back to the teacher's
width. Step i swaps block i for its student and trains only that student, with the network
of step i-1 as its teacher, on a local block-output loss plus the task loss.

The 1x1 conv ends in BN + ReLU only when the teacher block's own output does (ResNet units
and stages, VGG blocks). Pre-activation teachers (WRN stages) and linear bottlenecks
(MobileNetV2) emit negative values, so their students end linearly (conv-BN) and can match
them; ``extras["block_outputs"]`` records the choice per block.

Tags beside defaults and claims say whose number it is: [S] the Zhejiang Univ. patent (¶ marks
are its own), [P] the IJCAI-18 paper, [P-3rd] a public reimplementation named in the comment,
[R] kdbench's own choice; see CONTRIBUTING.md, "Where a number comes from: [S], [P], [R]".
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from annotated_types import Ge, Interval
from torch import nn

from kdbench.benchmarks.claims import Claim
from kdbench.benchmarks.config import Pair
from kdbench.benchmarks.data import Batch, BatchLoader
from kdbench.benchmarks.method import Compressed, FrozenTeacher, Method, RunContext, probe_model
from kdbench.benchmarks.registry import METHODS
from kdbench.methods.common import kd_kl
from kdbench.methods.common.blocks import Split, StudentBlock, block_inputs, block_names, thin_block
from kdbench.methods.common.bn import recalibrate_bn
from kdbench.methods.common.features import capture


class TrainOnly(nn.Module):
    """``net`` in which only ``parts`` ever enter train mode.

    The shared loop calls ``train()`` every epoch; frozen blocks must stay in eval mode so
    their BN statistics (the teacher's knowledge) do not move.
    """

    def __init__(self, net: nn.Module, parts: Sequence[nn.Module]):
        super().__init__()
        self.net = net
        self._parts = list(parts)  # a plain list: they are already registered inside net

    def train(self, mode: bool = True) -> TrainOnly:
        super().train(False)
        for part in self._parts:
            part.train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def block_term(student: torch.Tensor, teacher: torch.Tensor, kind: str) -> torch.Tensor:
    """Local block loss: batch mean of per-sample Frobenius norms (``fro``) or plain MSE."""
    diff = student.float() - teacher.detach().float()
    if kind == "fro":
        return diff.flatten(1).norm(dim=1).mean()
    return diff.pow(2).mean()


@METHODS.register_module("progressive_block_kd")
class ProgressiveBlockKD(Method):
    """Replace the teacher's blocks one by one with half-width students trained in place.

    Defaults are the paper's VGG-16 protocol for the ``full`` budget (pair ``vgg16_5pool``:
    five blocks split at the pools); on a ResNet a block is a stage. The student is derived
    from the teacher, not the suite pair's student architecture.
    """

    label = "Wang et al. IJCAI-18"

    # Zhejiang Univ. patent (2018) ¶0065 [S]: VGG-16 CIFAR-100, top-1 drop 2.22 pp and
    # computation "−169 %" (read as 2.69x fewer FLOPs [R]). The student is the teacher with
    # half-width blocks (not the pair's student), so the kd/scratch rows it is compared with
    # are another size.
    claims = (
        Claim("progressive_block_kd", "teacher", "top1", margin=-2.22, paper=-2.22,
              paper_note="Δ, patent ¶0065: VGG-16 CIFAR-100 top-1 drop 2.22 pp",
              text="top-1 within 2.22 points of the teacher"),
        Claim("progressive_block_kd", "teacher", "macs_ratio", direction="lower",
              paper=1 / 2.69, paper_note="value, patent ¶0065 'computation −169 %' read as "
                                         "2.69x fewer FLOPs",
              text="the blockwise student runs fewer MACs than the teacher"),
        Claim("progressive_block_kd", "kd", "top1",
              text="blockwise distillation beats end-to-end Hinton KD into the pair's student"),
        Claim("progressive_block_kd", "scratch", "top1",
              text="blockwise distillation beats the pair's student trained alone"),
    )

    @dataclass(frozen=True)
    class Config:
        split: Split = "stages"  # [R] stages (VGG blocks / ResNet stages) | units (residual units)
        # [P] (IJCAI-18, Fig. 2: half the filters) fraction of every conv's filters a student
        # block keeps
        width_ratio: Annotated[float, Interval(gt=0, le=1)] = 0.5
        # [S] (patent abstract) step i's teacher is N_{i-1} | original N_0
        teacher_prefix: Literal["converted", "original"] = "converted"
        # [P-3rd] (chris4540/DD2424-dl-proj, a VGG-16 CIFAR-10 reimplementation): the block
        # loss, fro (per-sample Frobenius norm) | mse, and alpha, the weight of the block term
        block_loss: Literal["fro", "mse"] = "fro"
        block_weight: float = 0.1
        ce_weight: float = 1.0  # weight of cross-entropy on the labels
        kd_weight: float = 0.0  # [R] optional logits KD from the step's teacher
        temperature: float = 4.0
        block_epochs: Annotated[int, Ge(1)] = 30  # [R] per block, SGD cosine
        block_lr: float = 0.01  # [R]
        # [R] end-to-end fine-tune, reported as row ":finetuned"; 0 = off
        finetune_epochs: Annotated[int, Ge(0)] = 30
        finetune_lr: float = 0.001  # [R]
        finetune_ce_weight: float = 0.1  # fine-tune loss: CE + KD from the original teacher
        finetune_kd_weight: float = 0.9
        train_images: int | None = None  # None: the budget's whole training split
        recalibrate_batches: int = 100  # training batches that re-estimate a block's BN stats

    # One short epoch per block and no fine-tune: every step in seconds. 512 images (8 steps
    # a block) left the real Fashion-MNIST smoke row at 31 % (teacher 80 %); 2,048 give 57 %.
    budget_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"block_epochs": 1, "block_lr": 0.05, "finetune_epochs": 0,
                  "train_images": 2048}}

    def supports(self, pair: Pair) -> str | None:
        try:
            block_names(probe_model(pair.teacher), self.cfg.split)
        except ValueError as exc:
            return f"cannot split teacher {pair.teacher} into blocks: {exc}"
        return None

    def run(self, ctx: RunContext) -> Compressed:
        cfg = self.cfg
        teacher = ctx.teacher()
        net = copy.deepcopy(teacher.model)  # N_0; becomes N_K one block at a time
        names = block_names(net, cfg.split)
        inputs = block_inputs(net, names, ctx.example_input(1))
        loader = ctx.train_loader(images=cfg.train_images)
        students = []
        for step, (name, example) in enumerate(zip(names, inputs, strict=True)):
            students.append(self.distil_block(ctx, teacher, net, name, example, loader, step))
        notes = [f"student derived from {ctx.pair.teacher} ({len(names)} {cfg.split} at "
                 f"{cfg.width_ratio:g}x filters + 1x1 recovery convs), not the pair's "
                 f"student {ctx.pair.student}"]
        controls = {}
        if cfg.finetune_epochs:
            tuned = self.finetune(ctx, teacher, net, loader)
            controls["finetuned"] = Compressed(model=tuned, notes=[*notes, "PBKD + fine-tune"])
        return Compressed(model=net, notes=notes, controls=controls,
                          extras={"blocks": len(names), "split": cfg.split,
                                  "block_outputs": [s.output for s in students]})

    def distil_block(self, ctx: RunContext, teacher: FrozenTeacher, net: nn.Module, name: str,
                     example: torch.Tensor, loader: BatchLoader, step: int) -> StudentBlock:
        """Step ``step``: swap block ``name`` of ``net`` (N_{i-1} -> N_i) and train its student."""
        cfg = self.cfg
        teacher_block = net.get_submodule(name)  # still the teacher's, frozen and in eval mode
        student = thin_block(teacher_block, example, cfg.width_ratio)
        guide = self.step_teacher(teacher, net)
        net.set_submodule(name, student)
        guide_block = guide.model.get_submodule(name) if guide is not None else None

        def forward(model: nn.Module, batch: Batch):
            with capture([student]) as seen:
                logits = model(batch.x)
            return logits, seen[0].input, seen[0].output

        def loss(batch: Batch, out):
            logits, block_in, block_out = out
            with torch.no_grad():
                if guide is None:  # N_{i-1}'s prefix is N_i's: run only the teacher block
                    target, t_logits = teacher_block(block_in), None
                else:
                    with capture([guide_block]) as seen:
                        t_logits = guide(batch.x)
                    target = seen[0].output
            return self.step_loss(batch, logits, block_out, target, t_logits)

        ctx.fit(TrainOnly(net, [student]), loss, params=student.parameters(), forward=forward,
                loader=loader, name=f"block{step}", epochs=cfg.block_epochs, lr=cfg.block_lr,
                schedule="cosine", warmup_epochs=0)
        # The BN running averages (momentum 0.1) lag the final weights, and after a short
        # schedule they are far from them: every later block and the deployed network read
        # this block in eval mode, so re-estimate its statistics on training batches.
        student.requires_grad_(False)
        recalibrate_bn(TrainOnly(net, [student]), loader, cfg.recalibrate_batches,
                       layers=student)
        student.eval()
        return student

    def step_teacher(self, teacher: FrozenTeacher, net: nn.Module) -> FrozenTeacher | None:
        """The network that supplies step i's targets when it must run in full.

        ``original``: N_0. ``converted`` (patent): N_{i-1}, needed whole only for logits KD;
        otherwise its prefix is N_i's and only its block i runs (same result, less compute).
        """
        if self.cfg.teacher_prefix == "original":
            return teacher
        if self.cfg.kd_weight > 0:
            return FrozenTeacher(copy.deepcopy(net))
        return None

    def step_loss(self, batch: Batch, logits: torch.Tensor, block_out: torch.Tensor,
                  target: torch.Tensor, t_logits: torch.Tensor | None):
        cfg = self.cfg
        ce = F.cross_entropy(logits, batch.y)
        local = block_term(block_out, target, cfg.block_loss)
        total = cfg.ce_weight * ce + cfg.block_weight * local
        parts = {"ce": ce.detach(), "block": local.detach()}
        if t_logits is not None and cfg.kd_weight > 0:
            kd = kd_kl(logits, t_logits, cfg.temperature)
            total = total + cfg.kd_weight * kd
            parts["kd"] = kd.detach()
        return total, parts

    def finetune(self, ctx: RunContext, teacher: FrozenTeacher, net: nn.Module,
                 loader: BatchLoader) -> nn.Module:
        """End-to-end fine-tune of all student blocks of a copy of N_K, KD from N_0."""
        cfg = self.cfg
        tuned = copy.deepcopy(net)
        blocks = [m for m in tuned.modules() if isinstance(m, StudentBlock)]
        for block in blocks:
            block.requires_grad_(True)

        def loss(batch: Batch, logits: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                t_logits = teacher(batch.x)
            return cfg.finetune_ce_weight * F.cross_entropy(logits, batch.y) + \
                cfg.finetune_kd_weight * kd_kl(logits, t_logits, cfg.temperature)

        params = [p for block in blocks for p in block.parameters()]
        ctx.fit(TrainOnly(tuned, blocks), loss, params=params, loader=loader, name="finetune",
                epochs=cfg.finetune_epochs, lr=cfg.finetune_lr, schedule="cosine",
                warmup_epochs=0)
        tuned.requires_grad_(False).eval()
        return tuned
