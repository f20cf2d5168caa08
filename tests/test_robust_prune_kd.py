"""Robust pruning + KD (Lee & Lee 2021): prox operators, zero-channel removal, the
adversarial KD loop (attack against the student, frozen teacher), sparsity vs λ, controls."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from kdbench.benchmarks.errors import ConfigError
from kdbench.benchmarks.measure import count_macs
from kdbench.benchmarks.measure.params import deployment_problems, zero_filters_by_layer
from kdbench.benchmarks.method import FrozenTeacher
from kdbench.benchmarks.registry import build_model
from kdbench.benchmarks.train import lr_at
from kdbench.methods.common.proximal import (
    group_soft_threshold,
    prox_group_,
    prox_l1_,
    soft_threshold,
)
from kdbench.methods.common.pruning import (
    channel_groups,
    classifier_of,
    prunable_layers,
    remove_zero_channels,
)
from kdbench.methods.robust_prune_kd import (
    GroupScore,
    RobustPruneKD,
    zero_weakest_channels,
    zero_weakest_per_group,
)

X = torch.randn(2, 3, 32, 32)
# teacher "standard": these tests hand in their own (random) teacher, not a trained one
TINY = {"controls": (), "attack_steps": 1, "prox_epochs": 1, "finetune_epochs": 1,
        "train_images": 128, "teacher": "standard"}


def resnet8(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("resnet8", num_classes=100).eval()


def method(**overrides) -> RobustPruneKD:
    m = RobustPruneKD(RobustPruneKD.make_config("smoke", {**TINY, **overrides}))
    m.name = "robust_prune_kd"
    return m


# ---- proximal operators --------------------------------------------------------------
def test_soft_threshold_values():
    out = soft_threshold(torch.tensor([3.0, -0.5, 0.2]), 1.0)
    assert torch.equal(out, torch.tensor([2.0, 0.0, 0.0]))


def test_group_prox_zeroes_a_group_iff_its_norm_is_at_most_the_threshold():
    rows = torch.tensor([[0.3, 0.4], [0.6, 0.8], [0.9, 1.2]])  # norms 0.5, 1.0, 1.5
    out = group_soft_threshold(rows, 1.0)
    assert torch.equal(out[0], torch.zeros(2)) and torch.equal(out[1], torch.zeros(2))
    assert torch.allclose(out[2], rows[2] * (1 - 1.0 / 1.5))


def test_prox_with_zero_lambda_is_the_identity():
    v = torch.randn(50)
    assert torch.equal(soft_threshold(v, 0.0), v)
    assert torch.equal(group_soft_threshold(v.view(5, 10), 0.0), v.view(5, 10))
    model = resnet8()
    before = {k: t.clone() for k, t in model.state_dict().items()}
    prox_group_(channel_groups(model, X, exclude=[classifier_of(model)]), 0.0)
    prox_l1_([m.weight for m in prunable_layers(model)], 0.0)
    assert all(torch.equal(before[k], t) for k, t in model.state_dict().items())


def test_group_prox_zeroes_whole_channels_including_their_batchnorm():
    model = resnet8()
    groups = channel_groups(model, X, exclude=[classifier_of(model)])
    norms = torch.cat([g.squared_norms().sqrt() for g in groups])
    threshold = float(norms.median())
    prox_group_(groups, threshold)
    zero = torch.cat([g.squared_norms() == 0 for g in groups])
    assert torch.equal(zero, norms <= threshold)
    block = model.layer1[0]
    dead = (block.conv1.weight.flatten(1).abs().sum(1) == 0).nonzero().flatten()
    assert torch.all(block.bn1.weight[dead] == 0) and torch.all(block.bn1.bias[dead] == 0)


# ---- physical removal of zero channels ------------------------------------------------
def test_removing_zero_channels_is_exact_and_respects_residual_coupling():
    model = resnet8()
    head = classifier_of(model)
    stage = next(g for g in channel_groups(model, X, exclude=[head]) if model.conv1 in g.layers)
    inner = model.layer1[0]
    with torch.no_grad():
        for t in (inner.conv1.weight, inner.bn1.weight, inner.bn1.bias):
            t[[1, 5]] = 0  # an intra-block channel: its group is conv1 alone
        stage.layers[0].weight[3] = 0  # residual channel 3, zero in ONE coupled layer only
    reference = model(X)
    before = count_macs(model, (X,))
    removed = remove_zero_channels(model, X, exclude=[head])
    assert removed == 2 and inner.conv1.out_channels == 14
    assert model.conv1.out_channels == 16  # channel 3 lives on in the other coupled layers
    assert torch.allclose(model(X), reference, atol=1e-5)
    assert count_macs(model, (X,)) < before and deployment_problems(model) == []


def test_a_residual_channel_goes_when_it_is_zero_in_every_coupled_layer():
    model = resnet8()
    head = classifier_of(model)
    stage = next(g for g in channel_groups(model, X, exclude=[head]) if model.conv1 in g.layers)
    with torch.no_grad():
        for t in stage.channel_tensors():
            t[3] = 0
    reference = model(X)
    assert remove_zero_channels(model, X, exclude=[head]) == 1
    assert model.conv1.out_channels == 15
    assert torch.allclose(model(X), reference, atol=1e-5)


def test_hard_threshold_keeps_the_strongest_channels_and_one_per_group():
    model = resnet8()
    groups = channel_groups(model, X, exclude=[classifier_of(model)])
    total = sum(g.channels for g in groups)
    zero_weakest_channels(groups, total // 2)
    alive = [int((g.squared_norms() > 0).sum()) for g in groups]
    assert all(a >= 1 for a in alive)
    assert total // 2 <= sum(alive) <= total // 2 + len(groups)


# ---- the adversarial KD loop -----------------------------------------------------------
def test_attack_targets_the_student_and_the_teacher_is_never_updated(make_context,
                                                                     monkeypatch):
    ctx = make_context(resnet8(1), pair=("resnet8", "resnet8"))
    teacher = ctx.teacher()
    before = {k: t.clone() for k, t in teacher.state_dict().items()}
    monkeypatch.setattr(ctx, "teacher", lambda: teacher)
    calls = {"teacher_grad_inputs": 0, "teacher": 0, "student_attack": 0}

    def on_teacher(module, inputs, output):
        calls["teacher"] += 1
        calls["teacher_grad_inputs"] += int(inputs[0].requires_grad)

    teacher.register_forward_hook(on_teacher)
    m = method(attack_steps=2, collapse_check_images=0)  # count the training calls only
    student_from = m.student_from

    def spied_student(t):
        student = student_from(t)

        def on_student(module, inputs, output):  # attack passes: input needs grad, eval mode
            calls["student_attack"] += int(inputs[0].requires_grad and not module.training)

        student.register_forward_hook(on_student)
        return student

    monkeypatch.setattr(m, "student_from", spied_student)
    out = m.run(ctx)
    steps = 2 * (128 // 64)  # two phases of two batches
    assert calls["student_attack"] == 2 * steps  # PGD-2 against the student every step
    assert calls["teacher"] == steps and calls["teacher_grad_inputs"] == 0
    assert all(torch.equal(before[k], t) for k, t in teacher.state_dict().items())
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert out.model is not teacher.model


def _prox_sparsity(ctx, lam: float, sparsity: str) -> float:
    m = method(sparsity=sparsity, lam=lam)
    student = m.student_from(ctx.teacher())
    groups = m.groups(student, ctx.example_input())
    torch.manual_seed(0)
    m.adversarial_fit(ctx, student, lambda b, out: nn.functional.cross_entropy(out.logits, b.y),
            f"prox-{sparsity}-{lam}", 1, after_step=m.prox_hook(student, groups, lam))
    return m.sparsity(student, groups)


@pytest.mark.parametrize(("sparsity", "lams"), [("unstructured", (0.0, 1.0, 4.0)),
                                                 ("filter", (0.0, 75.0, 100.0))])
def test_sparsity_grows_with_lambda(make_context, sparsity, lams):
    ctx = make_context(resnet8(1), pair=("resnet8", "resnet8"))
    found = [_prox_sparsity(ctx, lam, sparsity) for lam in lams]
    assert found[0] == 0.0 < found[1]  # λ = 0: plain training, no exact zeros
    assert found == sorted(found) and found[-1] >= 0.3, found  # ≥ 30 % zeros


def test_structured_run_returns_a_physically_smaller_model(make_context):
    ctx = make_context(resnet8(1), pair=("resnet8", "resnet8"))
    out = method(compression=4.0).run(ctx)
    teacher = ctx.teacher().model
    assert count_macs(out.model, (X,)) < count_macs(teacher, (X,))
    assert sum(p.numel() for p in out.model.parameters()) < sum(
        p.numel() for p in teacher.parameters())
    assert zero_filters_by_layer(out.model) == {} and deployment_problems(out.model) == []
    assert out.extras["target_compression"] == 4.0 and out.notes == []


def test_unstructured_run_reaches_the_target_and_keeps_the_zero_pattern(make_context):
    ctx = make_context(resnet8(1), pair=("resnet8", "resnet8"))
    out = method(sparsity="unstructured", compression=4.0, lam=0.5).run(ctx)
    weights = torch.cat([m.weight.flatten() for m in prunable_layers(out.model)])
    assert (weights == 0).float().mean() >= 0.75 - 1e-3  # after the masked fine-tune
    assert out.extras["final_weight_sparsity"] >= 0.75 - 1e-3
    assert any("unstructured" in n for n in out.notes)
    assert deployment_problems(out.model) == []


def test_controls_become_extra_rows(make_context):
    ctx = make_context(resnet8(1), pair=("resnet8", "resnet8"))
    out = method(controls=("magnitude_adv_ft", "prox_no_kd"), train_images=64).run(ctx)
    assert set(out.controls) == {"magnitude_adv_ft", "prox_no_kd"}
    assert out.controls["prox_no_kd"].extras["alpha"] == 0.0
    assert out.controls["magnitude_adv_ft"].extras["phase_epochs"] == [2]
    for control in out.controls.values():
        assert deployment_problems(control.model) == []


def test_the_magnitude_control_has_the_methods_widths_params_and_macs(make_context):
    ctx = make_context(resnet8(1), pair=("resnet8", "resnet8"))
    out = method(compression=4.0, controls=("magnitude_adv_ft",), train_images=64).run(ctx)
    control = out.controls["magnitude_adv_ft"]
    assert control.extras["group_widths"] == out.extras["group_widths"]
    assert control.extras["widths_matched"] is True

    def size(m):
        return sum(p.numel() for p in m.parameters()), count_macs(m, (X,))
    assert size(control.model) == size(out.model) < size(ctx.teacher().model)


def test_cutting_each_group_to_its_width_keeps_its_strongest_channels():
    model = resnet8()
    groups = channel_groups(model, X, exclude=[classifier_of(model)])
    before = {g.name: g.squared_norms().clone() for g in groups}
    widths = {g.name: max(1, g.channels // (i + 2)) for i, g in enumerate(groups)}
    zero_weakest_per_group(groups, widths)
    for g in groups:
        alive = g.squared_norms() > 0
        assert int(alive.sum()) == widths[g.name]
        strongest = before[g.name].topk(widths[g.name]).indices
        assert bool(alive[strongest].all())
    with pytest.raises(ValueError, match="no width given"):
        zero_weakest_per_group(groups, {})


def test_bad_config_values_are_named():
    with pytest.raises(ConfigError, match="sparsity must be one of"):
        method(sparsity="channel")
    with pytest.raises(ConfigError,
                       match=r"controls\[0\] must be one of magnitude_adv_ft.*got 'admm'"):
        method(controls=("admm",))
    with pytest.raises(ConfigError, match=r"compression must be > 1; got 1.0"):
        method(compression=1.0)


def test_frozen_teacher_copy_is_a_trainable_student():
    teacher = FrozenTeacher(resnet8())
    student = RobustPruneKD.student_from(teacher)
    assert student.training and all(p.requires_grad for p in student.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    assert dataclasses.is_dataclass(RobustPruneKD.Config)


def test_the_compression_sweep_is_suite_variants_sharing_one_lambda_setting(make_harness):
    harness = make_harness(budget="full")
    assert {"robust_prune_kd_x2", "robust_prune_kd_x4", "robust_prune_kd_x8"} <= set(
        harness.budget.variants)
    main = harness.build_method("robust_prune_kd")
    assert main.cfg.compression == 16.0 and main.cfg.lam is None  # calibrated per target
    for factor in (2, 4, 8):
        variant = harness.build_method(f"robust_prune_kd_x{factor}")
        assert variant.cfg.compression == factor and variant.cfg.controls == ()
        assert variant.cfg.lam is None
    fixed = make_harness(budget="full", method_overrides={"robust_prune_kd_x4": {"lam": 0.5}})
    assert fixed.build_method("robust_prune_kd_x4").effective_lam == pytest.approx(2 * 0.5)


def test_admm_baseline_of_the_memory_benchmark_keeps_two_weight_copies():
    from kdbench.benchmarks.perf.prox_vs_admm_memory import Admm

    model = resnet8()
    layers = prunable_layers(model)
    admm = Admm(layers, keep_fraction=0.5, rho=1e-3)
    assert admm.state_bytes() == 2 * sum(m.weight.numel() * 4 for m in layers)
    kept = (admm.z[0].flatten(1).abs().sum(1) > 0).sum()
    assert kept == math.ceil(0.5 * layers[0].out_channels)
    assert admm.penalty() > 0  # Z is the projection, W is not
    admm.update()
    assert torch.equal(admm.u[0], layers[0].weight.detach() - admm.z[0])


# ---- the teacher: adversarially trained by default, the standard one as a control ------
def test_the_default_teacher_is_adversarially_trained():
    assert RobustPruneKD.Config().teacher == "adversarial"
    smoke = RobustPruneKD.make_config("smoke")
    assert smoke.teacher == "adversarial"
    assert "standard_teacher" in RobustPruneKD.Config().controls
    m = RobustPruneKD(smoke)
    assert (m.teacher_attack.steps, m.teacher_attack.step_size) == (1, 10 / 255)  # FGSM-RS
    full = RobustPruneKD(RobustPruneKD.Config()).teacher_attack
    assert (full.steps, full.step_size, full.eps) == (10, 2 / 255, 8 / 255)  # Ye et al.'s PGD-10


def test_default_run_distils_from_the_adversarial_teacher_the_control_from_the_standard(
        make_context, monkeypatch):
    import kdbench.methods.robust_prune_kd as rpk
    from kdbench.benchmarks.teachers import TeacherInfo

    standard = resnet8(1)
    robust = FrozenTeacher(resnet8(2))
    ctx = make_context(standard, pair=("resnet8", "resnet8"))
    asked = []

    def fake_adversarial_teacher(context, attack):
        asked.append(attack)
        return robust, TeacherInfo("resnet8", "adv.pt", "f" * 64, {"top1": 1.0, "top5": 5.0},
                                   "cache")

    monkeypatch.setattr(rpk, "adversarial_teacher", fake_adversarial_teacher)
    m = method(teacher="adversarial", controls=("standard_teacher",), train_images=64)
    used = []
    prox_prune = m.prox_prune

    def spy(ctx, teacher, alpha, name, about=None):
        used.append((name, teacher))
        return prox_prune(ctx, teacher, alpha, name, about)

    monkeypatch.setattr(m, "prox_prune", spy)
    out = m.run(ctx)
    assert [a.steps for a in asked] == [1]
    (main_name, main_teacher), (control_name, control_teacher) = used
    assert (main_name, control_name) == ("main", "standard_teacher")
    assert main_teacher is robust
    assert all(torch.equal(a, b) for a, b in zip(control_teacher.state_dict().values(),
                                                 standard.state_dict().values(), strict=True))
    assert out.extras["teacher_adversarially_trained"] is True
    assert out.extras["kd_teacher"]["sha256"] == "f" * 64
    control = out.controls["standard_teacher"]
    assert control.extras["teacher_adversarially_trained"] is False


def test_adversarial_teacher_is_trained_with_pgd_once_then_cached_under_its_own_key(
        make_context, monkeypatch):
    import kdbench.methods.common.adversarial as adv
    from kdbench.benchmarks.attacks import PGDConfig
    from kdbench.benchmarks.teachers import teacher_key

    ctx = make_context(resnet8(1), pair=("resnet8", "resnet8"))
    tiny = ctx.budget.teacher_recipe.replace(epochs=1, batch_size=100)
    ctx = dataclasses.replace(ctx, budget=dataclasses.replace(ctx.budget, teacher_train=tiny))
    attack = PGDConfig(steps=1, step_size=10 / 255)
    attacked = []
    real_pgd = adv.pgd

    def spy(model, x01, y, config, **kwargs):
        attacked.append(config)
        return real_pgd(model, x01, y, config, **kwargs)

    monkeypatch.setattr(adv, "pgd", spy)
    rng = torch.get_rng_state()
    teacher, info = adv.adversarial_teacher(ctx, attack)
    assert torch.equal(torch.get_rng_state(), rng)  # the method's random stream is untouched
    assert info.source == "trained" and attacked == [attack] * 5  # 500 images, batches of 100
    assert not any(p.requires_grad for p in teacher.parameters())
    again, info2 = adv.adversarial_teacher(ctx, attack)
    assert info2.source == "cache" and info2.sha256 == info.sha256 and len(attacked) == 5
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(),
                                                 teacher.state_dict().values(), strict=True))
    standard = teacher_key("resnet8", ctx.num_classes, ctx.data.fingerprint,
                           ctx.budget.train_subset, tiny, ctx.seed)
    key = adv.adversarial_teacher_key(ctx, attack)
    assert key != standard and key[:16] in info.path
    assert adv.adversarial_teacher_key(ctx, PGDConfig(steps=2, step_size=5 / 255)) != key


def test_the_cache_dir_is_the_harness_one():
    from pathlib import Path

    from kdbench.methods.common.adversarial import harness_cache_dir

    class Ctx:
        workdir = Path("/somewhere/cache/work/0123456789abcdef")
        cache_dir = Path("/somewhere/cache")

    assert harness_cache_dir(Ctx()) == Path("/somewhere/cache")
    Ctx.cache_dir = None  # not a harness run: the run's own directory
    assert harness_cache_dir(Ctx()) == Ctx.workdir


# ---- sparsity strength vs schedule, and collapse --------------------------------------
def test_a_longer_schedule_with_the_same_lambda_stops_at_the_target(make_context):
    ctx = make_context(resnet8(1), pair=("resnet8", "resnet8"), batch_size=16)
    m = method(prox_epochs=10, train_images=32)  # 20 steps: the smoke λ would zero it all
    student = m.student_from(ctx.teacher())
    groups = m.groups(student, ctx.example_input())
    channels = sum(g.channels for g in groups)
    target = 1 - math.ceil(channels / math.sqrt(m.cfg.compression)) / channels  # the hard cut's
    out = m.prox_prune(ctx, ctx.teacher(), m.cfg.alpha, "main")
    assert out.extras["prox_sparsity"] <= target + 1e-9, "the prox overshot the compression"
    assert out.extras["prox_sparsity"] >= target - 0.05
    assert deployment_problems(out.model) == []


@pytest.mark.parametrize("sparsity", ["filter", "unstructured"])
def test_the_prox_never_empties_a_layer_whose_channels_are_all_weak(sparsity):
    # A fashion-mnist short seed lost its run when one λ for all layers zeroed every channel
    # of layer2.0.conv1 late in the prox phase: each layer keeps its strongest channel.
    from types import SimpleNamespace

    m = method(sparsity=sparsity)
    student = resnet8()
    groups = m.groups(student, X) if sparsity == "filter" else []
    weak = student.layer2[0].conv1
    with torch.no_grad():
        if sparsity == "filter":  # its channels (filters and BN) weak, of distinct strengths
            weak_group = next(g for g in groups if g.layers[0] is weak)
            scale = 1e-3 * torch.linspace(0.5, 1.0, weak_group.channels)
            for t in weak_group.channel_tensors():
                t.mul_(scale.view(-1, *([1] * (t.dim() - 1))))
        else:
            weak.weight.mul_(1e-4)
    lam = 0.05 if sparsity == "filter" else 1e-3  # above the weak layer, below the others
    hook = m.prox_hook(student, groups, lam)
    hook(SimpleNamespace(step=2, optimizer=SimpleNamespace(param_groups=[{"lr": 1.0}])))
    if sparsity == "filter":
        assert int((weak_group.squared_norms() > 0).sum()) == 1
        assert all(bool((g.squared_norms() > 0).any()) for g in groups)
    else:
        assert int((weak.weight != 0).sum()) == 1
    assert hook.stats["floored"] == 1


def test_a_huge_lambda_raises_a_collapse_error_naming_the_layer(make_context):
    from kdbench.methods.robust_prune_kd import PruningCollapseError

    ctx = make_context(resnet8(1), pair=("resnet8", "resnet8"))
    with pytest.raises(PruningCollapseError,
                       match=r"zeroes every channel of layer '[\w.]+'.*lam=") as caught:
        method(lam=1e6, train_images=64).run(ctx)
    assert "λ = 1e+06" in str(caught.value) and "prox_epochs" in str(caught.value)
    with pytest.raises(PruningCollapseError, match=r"every weight of layer '[\w.]+'"):
        method(lam=1e6, train_images=64, sparsity="unstructured").run(ctx)


def test_a_result_at_chance_is_an_error_not_a_row(make_context, monkeypatch):
    from kdbench.methods.robust_prune_kd import PruningCollapseError

    ctx = make_context(resnet8(1), pair=("resnet8", "resnet8"))
    teacher = ctx.teacher()
    m = method(train_images=64)
    student = m.student_from(teacher)
    scores = iter([{"top1": 40.0}, {"top1": 1.0}])  # the unpruned network, then the result
    monkeypatch.setattr(ctx, "evaluate", lambda model, split=None: next(scores))
    with pytest.raises(PruningCollapseError, match=r"at chance \(1.0% top-1.*narrowest layer "
                                                    r"is '[\w.]+' \(\d+ of \d+ channels"):
        m.check_not_at_chance(ctx, student, teacher, "main", 15.0, 0.9, 0.29)
    scores = iter([{"top1": 40.0}, {"top1": 20.0}])
    m.check_not_at_chance(ctx, student, teacher, "main", 15.0, 0.29, 0.29)  # fine: no error
    scores = iter([{"top1": 1.5}, {"top1": 1.0}])  # an untrained network: nothing to lose
    m.check_not_at_chance(ctx, student, teacher, "main", 15.0, 0.29, 0.29)


# ---- λ calibrated to the schedule --------------------------------------------------------
def _replay_prox(m: RobustPruneKD, student: nn.Module, groups, lam: float, lrs: list[float],
                 max_zeros: int) -> list[float]:
    """The prox hook alone (no gradient steps) over a schedule of learning rates; returns
    the sparsity after every step."""
    from types import SimpleNamespace

    hook = m.prox_hook(student, groups, lam, max_zeros)
    found = []
    for step, lr in enumerate(lrs, start=1):
        hook(SimpleNamespace(step=step, optimizer=SimpleNamespace(param_groups=[{"lr": lr}])))
        found.append(m.sparsity(student, groups))
    return found


def test_the_calibrated_prox_fades_the_cut_channels_out_over_the_whole_phase(make_context):
    # A fashion-mnist short run (λ = 15, 45 steps) hit its cap on 41 steps: the first step
    # zeroed every channel the cut removes and shrank every survivor by the cut's norm, and
    # then again on every step; the method ended 28 points below its magnitude control.
    ctx = make_context(resnet8(1), pair=("resnet8", "resnet8"))
    m = method(compression=4.0, prox_epochs=3, train_images=128)
    assert m.cfg.lam is None and m.effective_lam is None  # calibrated by default
    student = m.student_from(ctx.teacher())
    groups = m.groups(student, ctx.example_input())
    max_zeros, target = m.max_zeros(student, groups)
    lam = m.prox_lam(ctx, student, groups, max_zeros)
    recipe = ctx.recipe.replace(epochs=3, lr=m.cfg.lr, schedule=m.cfg.schedule, warmup_epochs=0)
    steps = len(m.loader(ctx))
    lrs = [lr_at(e, recipe) for e in range(3) for _ in range(steps)]
    start = torch.cat([g.squared_norms().sqrt() for g in groups])
    cut = float(start.kthvalue(max_zeros).values)
    assert lam * sum(lrs) == pytest.approx(cut, rel=1e-6)  # the phase's thresholds add to the cut
    found = _replay_prox(m, student, groups, lam, lrs, max_zeros)
    assert found[0] <= 0.25 * target, "the first step already cut to the target"
    assert found == sorted(found)
    assert found[-1] >= target - 0.05  # by the end, what the cut removes is (nearly) gone
    survivors = start > cut * 1.5
    end = torch.cat([g.squared_norms().sqrt() for g in groups])
    # Each survivor lost the phase's thresholds once: the cut's norm, not the cut's per step.
    assert torch.allclose(end[survivors], start[survivors] - cut, rtol=1e-4, atol=1e-6)


def test_a_fixed_lambda_still_serves_a_sweep_and_the_calibrated_one_follows_the_target(
        make_context):
    ctx = make_context(resnet8(1), pair=("resnet8", "resnet8"))
    lams = {}
    for c in (2.0, 8.0):
        m = method(compression=c)
        student = m.student_from(ctx.teacher())
        groups = m.groups(student, ctx.example_input())
        lams[c] = m.prox_lam(ctx, student, groups, m.max_zeros(student, groups)[0])
        fixed = method(compression=c, lam=2.0)
        assert fixed.prox_lam(ctx, student, groups, 1) == pytest.approx(2.0 * math.log2(c))
    assert 0 < lams[2.0] < lams[8.0]  # a deeper cut: a stronger λ over the same schedule


def trained_looking_bn(model: nn.Module) -> nn.Module:
    """BN scales and shifts of distinct sizes (a fresh network's are all 1 and 0)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.weight.uniform_(0.2, 1.0)
            bn.bias.uniform_(-0.2, 0.2)
    return model


@pytest.mark.parametrize("sparsity", ["filter", "bn_filter"])
def test_the_hard_cut_ranks_channels_by_what_the_prox_thresholds(sparsity):
    # The cut ranked by RMS norm (norm / √size) while the prox thresholded plain norms: the
    # cut then removed channels the prox had kept (all but a few of layer3's, whose large
    # fan-in makes their RMS small) instead of those it had zeroed.
    from types import SimpleNamespace

    m = method(sparsity=sparsity)
    student = trained_looking_bn(resnet8())
    groups = m.groups(student, X)
    measure = dict(m.magnitudes(student, groups))
    threshold = float(torch.cat(list(measure.values())).quantile(0.3))
    m.prox_hook(student, groups, threshold)(
        SimpleNamespace(step=2, optimizer=SimpleNamespace(param_groups=[{"lr": 1.0}])))
    zeroed = {g.name: set((g.squared_norms() == 0).nonzero().flatten().tolist()) for g in groups}
    assert sum(map(len, zeroed.values())) > 0
    alive = sum(g.channels for g in groups) - sum(map(len, zeroed.values()))
    groups_now = m.groups(student, X)
    score = GroupScore.norm_rms if sparsity == "bn_filter" else GroupScore.norm
    zero_weakest_channels(groups_now, alive, score)
    for g in groups_now:  # keeping as many channels as are alive keeps exactly those
        assert set((g.squared_norms() == 0).nonzero().flatten().tolist()) == zeroed[g.name]


def test_the_bn_filter_prox_shrinks_scales_and_shifts_and_zeroes_dead_channels_whole():
    from types import SimpleNamespace

    m = method(sparsity="bn_filter")
    student = trained_looking_bn(resnet8())
    groups = m.groups(student, X)
    before = [(g.norm_rms().clone(), g.squared_norms().clone()) for g in groups]
    filters = [g.layers[0].weight.detach().clone() for g in groups]
    threshold = float(torch.cat([b[0] for b in before]).quantile(0.4))
    m.prox_hook(student, groups, threshold)(
        SimpleNamespace(step=2, optimizer=SimpleNamespace(param_groups=[{"lr": 1.0}])))
    for g, (rms, _), weight in zip(groups, before, filters, strict=True):
        dead = rms <= threshold
        assert torch.allclose(g.norm_rms()[~dead], rms[~dead] - threshold, rtol=1e-5)
        assert bool((g.squared_norms()[dead] == 0).all())  # filters too: removable exactly
        assert torch.equal(g.layers[0].weight[~dead], weight[~dead])  # filters untouched
    out = student.eval()(X)
    remove_zero_channels(student, X, exclude=[classifier_of(student)])
    assert torch.allclose(student(X), out, atol=1e-5)
