"""KDAS-ReID: search space, mixed ops, genotype derivation, dynamic temperature, KD loss and
the bilevel steps."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from kdbench.benchmarks.data import ImageSplit
from kdbench.benchmarks.errors import ConfigError
from kdbench.benchmarks.method import FrozenTeacher
from kdbench.benchmarks.registry import build_model
from kdbench.methods.common import dynamic_temperature, epoch_temperature
from kdbench.methods.kdas_reid import SMOKE_OPS, KDASReID, Temperature, kdas_loss, split_identities
from kdbench.reid.nas import (
    OPS,
    DerivedNetwork,
    Genotype,
    MacroSpec,
    MixedOp,
    PartAware,
    Supernet,
    auto_stem_downsample,
    build_derived,
    build_op,
    derive_genotype,
    num_edges,
)


@pytest.mark.parametrize("height", [8, 7, 13, 2, 1])
def test_part_aware_keeps_the_shape_for_any_height(height):
    x = torch.randn(2, 6, height, 5)
    assert PartAware(6, 6)(x).shape == x.shape
    assert PartAware(6, 6, stride=2)(x).shape == (2, 6, math.ceil(height / 2), 3)


def test_part_aware_rows_follow_their_stripe():
    op = PartAware(4, 4)
    x = torch.randn(1, 4, 10, 3)
    y = x.clone()
    y[:, :, 8:] += 5.0  # changes only stripe 3 (rows 8, 9 of 10) in the input itself
    # Every row sees every stripe through attention, so all output rows move...
    assert not torch.allclose(op(x)[:, :, :8], op(y)[:, :, :8])
    # ...and rows are repeated per stripe: rows 0-2 (stripe 0 of 10 rows) get one vector.
    parts = []
    op.fuse.register_forward_hook(lambda m, i, o: parts.append(i[0][:, 4:]))
    op(x)
    stripe_of_row = [r * 4 // 10 for r in range(10)]
    for r in range(10):
        assert torch.equal(parts[0][:, :, r], parts[0][:, :, stripe_of_row.index(stripe_of_row[r])])


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("stride", [1, 2])
def test_every_op_keeps_channels_and_strides(name, stride):
    x = torch.randn(2, 8, 9, 6)
    for affine in (True, False):
        out = build_op(name, 8, stride, affine)(x)
        assert out.shape == (2, 8, math.ceil(9 / stride), math.ceil(6 / stride))


def test_mixed_op_weights_sum_to_one_and_mix_the_ops():
    net = Supernet(MacroSpec(2, 2), 5, SMOKE_OPS)
    for weights in net.arch_weights():
        assert weights.shape == (num_edges(4), len(SMOKE_OPS))
        torch.testing.assert_close(weights.sum(dim=1), torch.ones(num_edges(4)))
    mixed = MixedOp(SMOKE_OPS, 4, 1).eval()
    x = torch.randn(2, 4, 5, 4)
    one_hot = torch.zeros(len(SMOKE_OPS))
    one_hot[SMOKE_OPS.index("skip_connect")] = 1.0
    assert torch.equal(mixed(x, one_hot), x)
    w = torch.softmax(torch.randn(len(SMOKE_OPS)), 0)
    expected = sum(wi * op(x) for wi, op in zip(w, mixed.ops, strict=True))
    torch.testing.assert_close(mixed(x, w), expected)


def test_architecture_and_weight_parameters_are_disjoint_and_complete():
    net = Supernet(MacroSpec(4, 3), 5, SMOKE_OPS)
    arch = {id(p) for p in net.arch_parameters()}
    weights = {id(p) for p in net.weight_parameters()}
    assert not arch & weights and arch | weights == {id(p) for p in net.parameters()}


def test_derived_genotype_has_two_inputs_per_node_and_no_none():
    ops = ("none", "skip_connect", "sep_conv_3x3", "avg_pool_3x3")
    torch.manual_seed(0)
    normal = torch.softmax(torch.randn(num_edges(4), 4), -1)
    normal[:, 0] = 10.0  # `none` strongest everywhere: it must still never be chosen
    genotype = derive_genotype(normal, torch.softmax(torch.randn(num_edges(4), 4), -1), ops, 4)
    for gene in (genotype.normal, genotype.reduce):
        assert len(gene) == 2 * 4
        for node in range(4):
            (op_a, in_a), (op_b, in_b) = gene[2 * node:2 * node + 2]
            assert in_a != in_b and 0 <= in_a < 2 + node and 0 <= in_b < 2 + node
            assert "none" not in (op_a, op_b)
    assert genotype.normal_concat == genotype.reduce_concat == (2, 3, 4, 5)


def test_derivation_picks_the_strongest_edges_and_ops():
    ops = ("none", "skip_connect", "sep_conv_3x3")
    w = torch.full((num_edges(2), 3), 0.1)
    # node 2 (edges 0, 1): sep on input 1 (0.6) beats skip on input 0 (0.5)
    w[0, 1], w[1, 2] = 0.5, 0.6
    # node 3 (edges 2, 3, 4 from inputs 0, 1, 2): strongest are inputs 2 (skip) and 0 (sep)
    w[2, 2], w[3, 0], w[4, 1] = 0.7, 0.99, 0.8  # the 0.99 is `none` and does not count
    genotype = derive_genotype(w, w, ops, 2)
    assert genotype.normal == (("skip_connect", 0), ("sep_conv_3x3", 1),
                               ("sep_conv_3x3", 0), ("skip_connect", 2))


def test_genotype_round_trips_and_rebuilds_the_same_network():
    torch.manual_seed(1)
    supernet = Supernet(MacroSpec(4, 3), 7, SMOKE_OPS)
    genotype = supernet.genotype()
    assert Genotype.from_dict(genotype.to_dict()) == genotype
    net = DerivedNetwork(MacroSpec(6, 3, stem_downsample=1), genotype, 7)
    rebuilt = build_derived(net.architecture(), 7)
    rebuilt.load_state_dict(net.state_dict())  # same structure, key for key
    x = torch.randn(2, 3, 32, 16)
    torch.testing.assert_close(rebuilt.eval()(x), net.eval()(x))
    assert net.embed(x).shape == (2, net.classifier.in_features)


def test_invalid_genotypes_are_config_errors():
    good = {"normal": [["skip_connect", 0], ["skip_connect", 1]], "normal_concat": [2],
            "reduce": [["avg_pool_3x3", 0], ["skip_connect", 1]], "reduce_concat": [2]}
    Genotype.from_dict(good)
    with pytest.raises(ConfigError, match="'none' is not a derivable op"):
        Genotype.from_dict({**good, "normal": [["none", 0], ["skip_connect", 1]]})
    with pytest.raises(ConfigError, match="input 2 must be an earlier node"):
        Genotype.from_dict({**good, "reduce": [["skip_connect", 0], ["skip_connect", 2]]})
    with pytest.raises(ConfigError, match="not a genotype"):
        Genotype.from_dict({"normal": []})


@pytest.mark.parametrize("shape", ["linear", "cosine"])
def test_temperature_starts_at_t0_ends_at_exactly_one_and_decreases(shape):
    assert dynamic_temperature(0.0, 4.0, shape) == 4.0
    assert dynamic_temperature(1.0, 4.0, shape) == 1.0
    values = [dynamic_temperature(i / 100, 4.0, shape) for i in range(101)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    epochs = [epoch_temperature(e, 7, 5.0, shape) for e in range(7)]
    assert epochs[0] == 5.0 and epochs[-1] == 1.0
    assert all(a > b for a, b in itertools.pairwise(epochs))
    assert epoch_temperature(0, 1, 5.0, shape) == 1.0
    assert dynamic_temperature(0.5, 3.0, "linear") == 2.0


def test_temperature_settings_are_checked():
    with pytest.raises(ConfigError, match="temperature_schedule must be one of linear, cosine; "
                                          "got 'step'"):
        KDASReID.make_config("full", {"temperature_schedule": "step"})
    with pytest.raises(ConfigError, match=r"t0 must be >= 1; got 0\.5"):
        KDASReID.make_config("full", {"t0": 0.5})


def test_kd_loss_is_zero_for_identical_logits_and_hinton_kl_at_t1():
    torch.manual_seed(0)
    z_s, z_t, y = torch.randn(6, 10), torch.randn(6, 10), torch.randint(0, 10, (6,))
    assert float(kdas_loss(z_t, z_t, y, 4.0, 1.0)) == 0.0
    hinton = F.kl_div(F.log_softmax(z_s, 1), F.softmax(z_t, 1), reduction="batchmean")
    torch.testing.assert_close(kdas_loss(z_s, z_t, y, 1.0, 1.0), hinton)
    torch.testing.assert_close(kdas_loss(z_s, z_t, y, 1.0, 0.25),
                               0.25 * hinton + 0.75 * F.cross_entropy(z_s, y))


def test_identities_are_split_into_two_halves():
    labels = torch.tensor([0] * 5 + [1] * 4 + [2] * 1)
    split = ImageSplit(torch.zeros(10, 3, 4, 4, dtype=torch.uint8), labels,
                       {"idx": torch.arange(10)})
    a, b = split_identities(split, seed=3)
    assert sorted(a.meta["idx"].tolist() + b.meta["idx"].tolist()) == list(range(10))
    for cls, size in ((0, 5), (1, 4), (2, 1)):
        n_a, n_b = int((a.labels == cls).sum()), int((b.labels == cls).sum())
        assert n_a + n_b == size and n_a - n_b in (0, 1)


def test_method_config_is_validated():
    with pytest.raises(ConfigError, match=r"unknown op\(s\) \['conv_7x7'\].*known ops"):
        KDASReID.make_config("smoke", {"ops": ["skip_connect", "conv_7x7"]})
    with pytest.raises(ConfigError, match="kd_weight must be in"):
        KDASReID.make_config("full", {"kd_weight": 1.5})
    assert KDASReID.make_config("full").ops == tuple(OPS)


def test_bilevel_steps_update_only_their_own_parameters(make_context):
    """The weight step (ctx.fit) leaves α alone; the architecture step moves only α."""
    torch.manual_seed(0)
    teacher = build_model("resnet8", 100).eval()
    ctx = make_context(teacher)
    method = KDASReID(KDASReID.make_config("smoke", {"search_epochs": 1}))
    supernet = Supernet(MacroSpec(2, 2, 1), ctx.num_classes, ("skip_connect", "part_aware"))
    small = ctx.train_split.subset(16, seed=0)
    temperature = Temperature(4.0, "linear")
    step = method._arch_stepper(ctx, supernet, FrozenTeacher(teacher), temperature, small, 8)
    before = [p.detach().clone() for p in supernet.parameters()]
    step(None)
    moved = [not torch.equal(b, p) for b, p in zip(before, supernet.parameters(), strict=True)]
    arch = {id(p) for p in supernet.arch_parameters()}
    assert all(m == (id(p) in arch) for m, p in zip(moved, supernet.parameters(), strict=True))
    alphas = [p.detach().clone() for p in supernet.arch_parameters()]
    ctx.fit(supernet, lambda batch, logits: F.cross_entropy(logits, batch.y),
            params=supernet.weight_parameters(),
            loader=ctx.loader(small, train=True, batch_size=8),
            before_epoch=temperature.before_epoch, name="w", epochs=2)
    assert all(torch.equal(a, p) for a, p in zip(alphas, supernet.arch_parameters(), strict=True))
    assert temperature.by_epoch == {0: 4.0, 1: 1.0}  # set before every epoch by the loop


# ---- the stem: suited to the suite's input size -----------------------------------------------
@pytest.mark.parametrize(("height", "downsample"), [(256, 2), (128, 2), (64, 1), (32, 0),
                                                    (28, 0)])
def test_auto_stem_keeps_the_reid_stem_and_gives_cifar_inputs_a_stride_1_stem(height,
                                                                              downsample):
    """ReID inputs keep their stem (256x128 -> 64x32 with the full default of 2 stride-2
    convs, 64x32 -> 32x16 with smoke's 1); 32x32 classification inputs reach the cells at
    32x32 (DARTS's CIFAR stem), never 8x8."""
    assert auto_stem_downsample(height) == downsample
    assert KDASReID.make_config("full").stem_downsample is None  # auto by default
    assert KDASReID.make_config("smoke").stem_downsample is None
    method = KDASReID(KDASReID.make_config("full"))
    assert method.stem(height)[0] == downsample
    assert KDASReID(KDASReID.make_config("full", {"stem_downsample": 1})).stem(height) == \
        (1, "configured")
    with pytest.raises(ConfigError, match="stem_downsample"):
        KDASReID.make_config("full", {"stem_downsample": -1})


def _first_cell_inputs(net_cls):
    """A ``net_cls`` subclass recording the resolution its first cell receives."""
    seen = []

    class Recording(net_cls):
        def run_cell(self, cell, s0, s1):
            if cell is self.cells[0]:
                seen.append(tuple(s1.shape[-2:]))
            return super().run_cell(cell, s0, s1)

    return Recording, seen


def test_cifar_size_inputs_are_searched_at_full_resolution_and_rebuild(make_context,
                                                                       monkeypatch):

    import kdbench.methods.kdas_reid

    torch.manual_seed(0)
    ctx = make_context(build_model("resnet8", 100).eval(), epochs=1, batch_size=16)
    few = ctx.train_split.take(ctx.train_split.labels < 10)  # 10 classes of 5 images
    ctx = dataclasses.replace(ctx, train_split=few)
    search_net, searched = _first_cell_inputs(Supernet)
    derived_net, derived = _first_cell_inputs(DerivedNetwork)
    monkeypatch.setattr(kdbench.methods.kdas_reid, "Supernet", search_net)
    monkeypatch.setattr(kdbench.methods.kdas_reid, "DerivedNetwork", derived_net)
    cfg = KDASReID.make_config("smoke", {"search_epochs": 1, "search_batch_size": 16,
                                         "retrain_epochs": 1, "steps": 1,
                                         "ops": ("skip_connect", "avg_pool_3x3")})
    out = KDASReID(cfg).run(ctx)
    assert searched and set(searched) == {(32, 32)}  # not 8x8 (nor 16x16)
    assert derived and set(derived) == {(32, 32)}
    macro = out.extras["architecture"]["macro"]
    assert macro["stem_downsample"] == 0
    assert out.extras["stem"] == {"downsample": 0, "rule": "auto from input height 32",
                                  "cell_input": [32, 32]}
    rebuilt = build_derived(out.extras["architecture"], ctx.num_classes)
    rebuilt.load_state_dict(out.model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt.eval()(x), out.model.eval()(x))


def test_reid_size_inputs_keep_the_stride_2_stem():
    spec = MacroSpec(4, 2, auto_stem_downsample(64))
    net, seen = _first_cell_inputs(Supernet)
    net(spec, 5, SMOKE_OPS)(torch.randn(1, 3, 64, 32))
    assert seen == [(32, 16)]
    net, seen = _first_cell_inputs(Supernet)
    net(MacroSpec(4, 2, auto_stem_downsample(256)), 5, SMOKE_OPS)(torch.randn(1, 3, 256, 128))
    assert seen == [(64, 32)]
