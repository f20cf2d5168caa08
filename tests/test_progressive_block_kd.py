"""Progressive blockwise KD: its invariants (block output shapes and receptive field, half
the filters plus a 1x1 back, only the step's block trains, MACs fall at every step)."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

import kdbench.methods.progressive_block_kd
from kdbench.benchmarks.config import Pair
from kdbench.benchmarks.errors import ConfigError
from kdbench.benchmarks.measure import count_macs
from kdbench.benchmarks.measure.params import deployment_problems
from kdbench.benchmarks.registry import build_model
from kdbench.methods.common.blocks import StudentBlock, block_inputs, block_names, thin_block
from kdbench.methods.progressive_block_kd import ProgressiveBlockKD

X = torch.randn(2, 3, 32, 32)


def model(arch: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(arch, num_classes=100).eval()


def method(**overrides) -> ProgressiveBlockKD:
    cfg = {"block_epochs": 1, "finetune_epochs": 0, "train_images": 128, **overrides}
    return ProgressiveBlockKD(ProgressiveBlockKD.make_config("smoke", cfg))


def students(arch: str, split: str = "stages", first: int | None = None):
    """(teacher block, its input, student block) for every block (or the ``first`` ones)
    of a fresh ``arch``."""
    net = model(arch)
    names = block_names(net, split)[:first]
    inputs = block_inputs(net, names, X)
    return [(net.get_submodule(n), h, thin_block(net.get_submodule(n), h, 0.5).eval())
            for n, h in zip(names, inputs, strict=True)]


def main_path_convs(block: nn.Module) -> list[nn.Conv2d]:
    """Convs on the main path in execution order (ResNet shortcut projections excluded)."""
    return [m for name, m in block.named_modules()
            if isinstance(m, nn.Conv2d) and "downsample" not in name]


def receptive_field(convs: list[nn.Conv2d]) -> int:
    """Analytic receptive field of a chain of convs: r += (k - 1)·d·jump; jump *= stride."""
    field, jump = 1, 1
    for conv in convs:
        field += (conv.kernel_size[0] - 1) * conv.dilation[0] * jump
        jump *= conv.stride[0]
    return field


@pytest.mark.parametrize(("arch", "split"), [("resnet14", "stages"), ("resnet14", "units"),
                                             ("vgg16_5pool", "stages")])
def test_every_student_block_has_its_teacher_blocks_output_shape(arch, split):
    with torch.no_grad():
        for teacher_block, h, student in students(arch, split):
            assert student(h).shape == teacher_block(h).shape


@pytest.mark.parametrize("arch", ["resnet14", "vgg16_5pool"])
def test_student_blocks_keep_kernels_strides_and_receptive_field(arch):
    for teacher_block, _, student in students(arch):
        spatial = [(c.kernel_size, c.stride, c.dilation, c.padding)
                   for c in main_path_convs(student.body)]
        assert spatial == [(c.kernel_size, c.stride, c.dilation, c.padding)
                           for c in main_path_convs(teacher_block)]
        recover = student.recover[0]
        assert (recover.kernel_size, recover.stride) == ((1, 1), (1, 1))
        assert receptive_field([*main_path_convs(student.body), recover]) == \
            receptive_field(main_path_convs(teacher_block))


def test_vgg_blocks_halve_every_conv_and_map_back_with_a_1x1():
    for teacher_block, _, student in students("vgg16_5pool"):
        t_convs, s_convs = main_path_convs(teacher_block), main_path_convs(student.body)
        assert [c.out_channels // 2 for c in t_convs] == [c.out_channels for c in s_convs]
        assert s_convs[0].in_channels == t_convs[0].in_channels
        assert student.recover[0].out_channels == t_convs[-1].out_channels


def test_residual_channels_tied_to_the_block_input_keep_their_width():
    (_, _, student), *_ = students("resnet14")  # layer1 adds its input: no projection
    assert [u.conv1.out_channels for u in student.body] == [8, 8]
    assert [u.conv2.out_channels for u in student.body] == [16, 16]


def test_student_blocks_are_freshly_initialised():
    for teacher_block, _, student in students("resnet14"):
        t_first, s_first = main_path_convs(teacher_block)[0], main_path_convs(student.body)[0]
        kept = s_first.weight.shape[0]
        assert not torch.equal(s_first.weight, t_first.weight[:kept])


def vgg16_5pool_student_macs() -> int:
    """Analytic MACs of the 5-block VGG-16 student: in each block the first conv C_in -> C/2,
    the others C/2 -> C/2 (3x3), then a 1x1 C/2 -> C; head Linear(512, 100)."""
    blocks = [(64, 2, 32), (128, 2, 16), (256, 3, 8), (512, 3, 4), (512, 3, 2)]
    total, c_in = 0, 3
    for c, convs, size in blocks:
        half = c // 2
        total += size * size * (9 * c_in * half + (convs - 1) * 9 * half * half + half * c)
        c_in = c
    return total + 512 * 100


def test_full_vgg16_student_costs_the_analytic_third_of_the_teacher():
    net = model("vgg16_5pool")
    for name, h in zip(block_names(net, "stages"), block_inputs(net, block_names(net, "stages"),
                                                                  X), strict=True):
        net.set_submodule(name, thin_block(net.get_submodule(name), h, 0.5))
    x = (X[:1],)
    assert count_macs(net, x) == vgg16_5pool_student_macs()
    assert count_macs(net, x) / count_macs(model("vgg16_5pool"), x) == pytest.approx(
        1 / 3.0, rel=0.01)


@pytest.mark.parametrize(("teacher_prefix", "kd_weight"), [("converted", 0.0),
                                                          ("converted", 0.5), ("original", 0.5)])
def test_a_step_trains_only_its_student_block(make_context, monkeypatch, teacher_prefix,
                                              kd_weight):
    teacher = model("resnet14")
    ctx = make_context(teacher)
    pbkd = method(teacher_prefix=teacher_prefix, kd_weight=kd_weight)
    net = copy.deepcopy(ctx.teacher().model)
    names = block_names(net, "stages")
    inputs = block_inputs(net, names, X[:1])
    loader = ctx.train_loader(images=128)
    pbkd.distil_block(ctx, ctx.teacher(), net, names[0], inputs[0], loader, 0)
    initial = {}

    def recording_thin_block(*args):
        block = thin_block(*args)
        initial.update({k: v.clone() for k, v in block.state_dict().items()})
        return block

    monkeypatch.setattr(kdbench.methods.progressive_block_kd, "thin_block", recording_thin_block)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    student = pbkd.distil_block(ctx, ctx.teacher(), net, names[1], inputs[1], loader, 1)
    after = net.state_dict()
    inside = {f"{names[1]}.{k}" for k in student.state_dict()}
    outside = set(after) - inside
    assert outside and all(torch.equal(before[k], after[k]) for k in outside), \
        "a frozen parameter or BN statistic moved"
    assert all(torch.equal(a, b) for a, b in zip(
        teacher.state_dict().values(), model("resnet14").state_dict().values(), strict=True))
    trained = student.state_dict()
    assert not all(torch.equal(initial[k], trained[k]) for k in initial), "it did not train"


def test_each_step_adds_one_student_block_and_cuts_macs(make_context, monkeypatch):
    teacher = model("resnet14")
    ctx = make_context(teacher)
    pbkd = method()
    x = (X[:1],)
    macs = [count_macs(teacher, x)]
    counts = []
    distil = ProgressiveBlockKD.distil_block

    def spy(self, ctx, teacher, net, *args):
        block = distil(self, ctx, teacher, net, *args)
        counts.append(sum(isinstance(m, StudentBlock) for m in net.modules()))
        macs.append(count_macs(net, x))
        return block

    monkeypatch.setattr(ProgressiveBlockKD, "distil_block", spy)
    out = pbkd.run(ctx)
    assert counts == [1, 2, 3]
    assert all(later < earlier for earlier, later in itertools.pairwise(macs))
    assert all(isinstance(stage, StudentBlock) for stage in out.model.stages())
    assert deployment_problems(out.model) == []
    assert "student derived from resnet14" in out.notes[0]
    assert out.extras["block_outputs"] == ["relu"] * 3  # post-activation teacher blocks
    assert torch.equal(out.model.fc.weight, teacher.fc.weight)  # the head stays the teacher's


def test_finetune_row_trains_only_student_blocks(make_context):
    teacher = model("resnet14")
    out = method(finetune_epochs=1).run(make_context(teacher))
    tuned = out.controls["finetuned"].model
    assert torch.equal(tuned.conv1.weight, teacher.conv1.weight)
    assert torch.equal(tuned.bn1.running_mean, teacher.bn1.running_mean)
    assert not torch.equal(tuned.layer3.recover[0].weight, out.model.layer3.recover[0].weight)


def test_block_mse_on_held_out_data_halves_during_step_one(make_context):
    teacher = model("resnet14")
    ctx = make_context(teacher)
    pbkd = method(block_loss="mse", ce_weight=0.0, block_weight=1.0, block_epochs=3,
                  block_lr=0.2, train_images=None)
    net = copy.deepcopy(ctx.teacher().model)
    name = block_names(net, "stages")[0]
    held_out = next(iter(ctx.test_loader())).x[:64]
    h = block_inputs(net, [name], held_out)[0]
    teacher_block = net.get_submodule(name)

    def block_mse(student: nn.Module) -> float:
        with torch.no_grad():
            return float((student.eval()(h) - teacher_block(h)).pow(2).mean())

    torch.manual_seed(0)
    initial = block_mse(thin_block(teacher_block, h[:1], 0.5))
    torch.manual_seed(0)
    student = pbkd.distil_block(ctx, ctx.teacher(), net, name, h[:1], ctx.train_loader(), 0)
    final = block_mse(student)
    assert final <= 0.5 * initial, f"block MSE {initial:.4f} -> {final:.4f}"


def test_bad_config_names_the_allowed_values():
    with pytest.raises(ConfigError, match="split must be one of stages, units"):
        ProgressiveBlockKD.make_config("full", {"split": "layers"})
    with pytest.raises(ConfigError, match="block_loss must be one of fro, mse"):
        ProgressiveBlockKD.make_config("full", {"block_loss": "l1"})


def test_plain_vgg_layers_are_not_residual_units():
    reason = method(split="units").supports(Pair("vgg16_5pool", "vgg8"))
    assert reason is not None and "use split='stages'" in reason
    assert method().supports(Pair("vgg16_5pool", "vgg8")) is None


# ---- the student block ends like its teacher block ------------------------------------------
def _min_output(block: nn.Module, h: torch.Tensor) -> float:
    with torch.no_grad():
        return float(block.eval()(h).min())


@pytest.mark.parametrize(("arch", "first"), [("wrn_16_2", None), ("mobilenetv2", 2)])
def test_pre_activation_blocks_get_linear_student_ends(arch, first):
    """WRN stages (pre-activation residual sums) and MobileNetV2 groups (linear bottlenecks)
    emit negative values: the student block must be able to match them (no final ReLU)."""
    for teacher_block, h, student in students(arch, first=first):
        assert _min_output(teacher_block, h) < 0
        assert not isinstance(student.recover[-1], nn.ReLU)
        assert _min_output(student, h) < 0
        assert student(h).shape == teacher_block(h).shape


@pytest.mark.parametrize("arch", ["resnet14", "vgg16_5pool"])
def test_post_activation_blocks_keep_relu_student_ends(arch):
    for teacher_block, h, student in students(arch):
        assert _min_output(teacher_block, h) >= 0
        assert [type(m) for m in student.recover] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
        assert _min_output(student, h) >= 0



def test_a_trained_block_reads_bn_statistics_of_its_final_weights(make_context):
    """After a short schedule the momentum-0.1 running averages lag the trained weights; the
    block is read in eval mode from then on, so its statistics are re-estimated afresh: a
    cumulative average over training batches through the final weights."""
    from torch.nn.modules.batchnorm import _BatchNorm

    teacher = model("resnet14")
    ctx = make_context(teacher)
    pbkd = method(block_epochs=3, recalibrate_batches=4)
    net = copy.deepcopy(ctx.teacher().model)
    names = block_names(net, "stages")
    inputs = block_inputs(net, names, X[:1])
    loader = ctx.train_loader(images=128)  # 2 batches an epoch: 6 training steps
    before = {n: m.num_batches_tracked.item() for n, m in net.named_modules()
              if isinstance(m, _BatchNorm)}
    student = pbkd.distil_block(ctx, ctx.teacher(), net, names[0], inputs[0], loader, 0)
    assert not student.training and not any(p.requires_grad for p in student.parameters())
    bns = [m for m in student.modules() if isinstance(m, _BatchNorm)]
    assert bns and all(bn.num_batches_tracked.item() == len(loader) == 2 for bn in bns)
    assert all(bn.momentum == 0.1 for bn in bns)  # the training momentum is given back
    after = {n: m.num_batches_tracked.item() for n, m in net.named_modules()
             if isinstance(m, _BatchNorm) and not n.startswith(names[0])}
    assert after and all(before[n] == v for n, v in after.items())  # the rest untouched
