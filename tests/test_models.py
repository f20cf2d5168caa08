"""The model zoo: exact sizes, registry, activation layout, stage features, init and export."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

import kdbench.benchmarks.models  # noqa: F401  (registers the zoo)
from kdbench.benchmarks.measure.flops import count_macs
from kdbench.benchmarks.registry import MODELS, build_model

RESNETS = [f"resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110)]
RESNETS_A = [f"resnet{d}_a" for d in (20, 32, 44, 56, 110)]
ALL_NAMES = sorted(
    [
        *RESNETS,
        *RESNETS_A,
        "resnet8x4",
        "resnet32x4",
        "vgg8",
        "vgg11",
        "vgg13",
        "vgg16",
        "vgg16_5pool",
        "vgg16_5pool_fc2",
        "wrn_16_2",
        "wrn_40_1",
        "wrn_40_2",
        "mobilenetv2",
    ]
)

# name, num_classes, params (BN affine + biases, no running stats), MACs at 1x3x32x32
REFERENCE_COUNTS = [
    ("resnet20", 100, 278_324, 40_818_944),
    ("resnet20_a", 100, 275_572, 40_556_800),
    ("resnet32", 100, 472_756, 69_130_496),
    ("resnet32_a", 100, 470_004, 68_868_352),
    ("resnet56", 100, 861_620, 125_753_600),
    ("resnet56_a", 100, 858_868, 125_491_456),
    ("resnet56_a", 10, None, 125_485_696),
    ("resnet110", 100, 1_736_564, 253_155_584),
    ("resnet110_a", 100, 1_733_812, 252_893_440),
    ("resnet8x4", 100, 1_233_540, 177_071_104),
    ("resnet32x4", 100, 7_433_860, 1_083_040_768),
    ("vgg8", 100, 3_965_028, 96_192_512),
    ("vgg11", 100, 9_277_284, 209_438_720),
    ("vgg13", 100, 9_462_180, 284_936_192),
    ("vgg16", 100, 14_774_436, 398_182_400),
    ("vgg16_5pool_fc2", 10, 14_991_946, 313_463_808),
    ("vgg16_5pool", 100, 14_774_436, 313_247_744),
    ("wrn_16_2", 100, 703_284, 101_118_464),
    ("wrn_40_1", 100, 569_780, 83_286_272),
    ("wrn_40_2", 100, 2_255_156, 327_610_880),
    ("mobilenetv2", 100, 812_836, 6_523_648),
]


def _build(name: str, num_classes: int = 100) -> nn.Module:
    return MODELS.module_dict[name](num_classes=num_classes)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _macs(model: nn.Module) -> int:
    return count_macs(model, (torch.randn(1, 3, 32, 32),))


def test_registered_names() -> None:
    # The CIFAR zoo exactly; other packages (reid/) register models of their own.
    zoo = [n for n, f in MODELS.module_dict.items()
           if f.__module__.startswith("kdbench.benchmarks.")]
    assert sorted(zoo) == ALL_NAMES


def test_build_model_through_registry() -> None:
    model = build_model("resnet8", 10)
    assert isinstance(model, nn.Module)
    assert model.fc.out_features == 10


@pytest.mark.parametrize(("name", "num_classes", "params", "macs"), REFERENCE_COUNTS)
def test_reference_counts(name: str, num_classes: int, params: int | None, macs: int) -> None:
    model = _build(name, num_classes)
    if params is not None:
        assert _params(model) == params
    assert _macs(model) == macs


def _cifar_resnet_counts(
    depth: int, filters: tuple[int, int, int, int], num_classes: int, option_a: bool
) -> tuple[int, int]:
    """Params and MACs of a CIFAR ResNet, summed layer by layer at a 32x32 input."""
    n = (depth - 2) // 6
    params = 3 * 3 * 3 * filters[0] + 2 * filters[0]  # stem conv + BN
    macs = 3 * 3 * 3 * filters[0] * 32 * 32
    in_ch = filters[0]
    for stage, (out_ch, stride) in enumerate(zip(filters[1:], (1, 2, 2), strict=True)):
        pixels = (32 // 2**stage) ** 2  # output resolution of the stage
        for block in range(n):
            cin = in_ch if block == 0 else out_ch
            params += 9 * cin * out_ch + 2 * out_ch + 9 * out_ch * out_ch + 2 * out_ch
            macs += (9 * cin * out_ch + 9 * out_ch * out_ch) * pixels
            if block == 0 and (stride != 1 or cin != out_ch) and not option_a:
                params += cin * out_ch + 2 * out_ch  # 1x1 projection + BN
                macs += cin * out_ch * pixels
        in_ch = out_ch
    params += filters[3] * num_classes + num_classes
    macs += filters[3] * num_classes
    return params, macs


def test_analytic_formula_matches_reference_table() -> None:
    narrow, wide = (16, 16, 32, 64), (32, 64, 128, 256)
    assert _cifar_resnet_counts(20, narrow, 100, False) == (278_324, 40_818_944)
    assert _cifar_resnet_counts(110, narrow, 100, True) == (1_733_812, 252_893_440)
    assert _cifar_resnet_counts(32, wide, 100, False) == (7_433_860, 1_083_040_768)


@pytest.mark.parametrize(
    ("name", "depth", "option_a"),
    [
        ("resnet8", 8, False),
        ("resnet14", 14, False),
        ("resnet44", 44, False),
        ("resnet44_a", 44, True),
    ],
)
def test_resnet_counts_match_analytic_formula(name: str, depth: int, option_a: bool) -> None:
    params, macs = _cifar_resnet_counts(depth, (16, 16, 32, 64), 100, option_a)
    model = _build(name)
    assert _params(model) == params
    assert _macs(model) == macs


@pytest.mark.parametrize("name", ALL_NAMES)
def test_builds_and_returns_logits(name: str) -> None:
    x = torch.randn(2, 3, 32, 32)
    for num_classes in (10, 100):
        model = _build(name, num_classes).eval()
        with torch.no_grad():
            out = model(x)
        assert isinstance(out, torch.Tensor)
        assert out.shape == (2, num_classes)
        assert torch.isfinite(out).all()


class _ReluCallCounter(TorchFunctionMode):
    """Counts ReLU calls made through any functional or tensor entry point."""

    RELU_FUNCS = (
        torch.nn.functional.relu,
        torch.relu,
        torch.relu_,
        torch.Tensor.relu,
        torch.Tensor.relu_,
    )

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.RELU_FUNCS:
            self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_relu_is_its_own_module(name: str) -> None:
    model = _build(name).train()
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert relus
    calls = {id(m): 0 for m in relus}

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        calls[id(module)] += 1

    for m in relus:
        m.register_forward_hook(hook)
    with _ReluCallCounter() as counter:
        model(torch.randn(2, 3, 32, 32))
    assert set(calls.values()) == {1}, "a ReLU module is shared between call sites or unused"
    # No ReLU applied outside a module: every relu call comes from one of the modules.
    assert counter.calls == len(relus)
    assert not any(getattr(m, "inplace", False) for m in relus)


def _stage_shapes(model: nn.Module, size: int = 32) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = []
    handles = [
        s.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
        for s in model.stages()
    ]
    model.eval()(torch.randn(1, 3, size, size))
    for h in handles:
        h.remove()
    return shapes


def _resnet_stages(f: tuple[int, int, int]) -> list[tuple[int, ...]]:
    return [(f[0], 32, 32), (f[1], 16, 16), (f[2], 8, 8)]


VGG_STAGES = [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)]
EXPECTED_STAGES = {
    **{name: _resnet_stages((16, 32, 64)) for name in RESNETS + RESNETS_A},
    "resnet8x4": _resnet_stages((64, 128, 256)),
    "resnet32x4": _resnet_stages((64, 128, 256)),
    **{name: VGG_STAGES for name in ("vgg8", "vgg11", "vgg13", "vgg16")},
    "vgg16_5pool": [*VGG_STAGES[:4], (512, 2, 2)],
    "vgg16_5pool_fc2": [*VGG_STAGES[:4], (512, 2, 2)],
    "wrn_16_2": _resnet_stages((32, 64, 128)),
    "wrn_40_1": _resnet_stages((16, 32, 64)),
    "wrn_40_2": _resnet_stages((32, 64, 128)),
    "mobilenetv2": [(12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2)],
}

REPDISTILLER_ATTRS = {
    "resnet": ["conv1", "bn1", "layer1", "layer2", "layer3", "avgpool", "fc"],
    "vgg": [*(f"block{i}" for i in range(5)), *(f"pool{i}" for i in range(5)), "classifier"],
    "wrn": ["conv1", "block1", "block2", "block3", "bn1", "fc"],
    "mobilenetv2": ["conv1", "blocks", "conv2", "avgpool", "classifier"],
}


@pytest.mark.parametrize("name", ALL_NAMES)
def test_stages_and_attribute_names(name: str) -> None:
    model = _build(name)
    assert _stage_shapes(model) == EXPECTED_STAGES[name]
    family = next(f for f in REPDISTILLER_ATTRS if name.startswith(f))
    for attr in REPDISTILLER_ATTRS[family]:
        assert isinstance(getattr(model, attr), nn.Module), attr
    if family == "vgg":
        for block in model.stages():
            assert isinstance(block[-1], nn.ReLU) and isinstance(block[-2], nn.BatchNorm2d)


@pytest.mark.parametrize(
    ("name", "keys"),
    [
        ("resnet8x4", ["conv1.weight", "layer1.0.downsample.0.weight", "layer3.0.bn2.bias"]),
        ("vgg8", ["block0.0.bias", "block4.1.running_var", "classifier.weight"]),
        ("wrn_16_2", ["block1.layer.0.convShortcut.weight", "block3.layer.1.bn1.weight"]),
        ("mobilenetv2", ["conv1.0.weight", "blocks.6.0.conv.7.weight", "classifier.0.bias"]),
    ],
)
def test_state_dict_keys_match_repdistiller(name: str, keys: list[str]) -> None:
    assert set(keys) <= set(_build(name).state_dict())


def test_vgg_pools_block3_only_for_64px_inputs() -> None:
    model = _build("vgg8")
    assert _stage_shapes(model, size=64)[3:] == [(512, 8, 8), (512, 4, 4)]


def test_option_a_shortcut_is_parameter_free_zero_pad() -> None:
    model = _build("resnet20_a")
    shortcut = model.layer2[0].downsample
    assert _params(shortcut) == 0
    x = torch.randn(2, 16, 32, 32)
    out = shortcut(x)
    assert out.shape == (2, 32, 16, 16)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert not out[:, :8].any() and not out[:, 24:].any()
    assert model.layer1[0].downsample is None


def test_wrn_projection_shortcut_sees_preactivated_input() -> None:
    block = _build("wrn_40_1").block2.layer[0]
    nn.init.normal_(block.bn1.bias)  # make the pre-activation differ from the raw input
    x = torch.randn(2, 16, 32, 32)
    with torch.no_grad():
        block.eval()
        preact = block.relu1(block.bn1(x))
        residual = block.conv2(block.relu2(block.bn2(block.conv1(preact))))
        expected = block.convShortcut(preact) + residual
        assert torch.allclose(block(x), expected)


@pytest.mark.parametrize("name", ["resnet20", "resnet20_a", "vgg8", "wrn_16_2", "mobilenetv2"])
def test_init_is_deterministic_and_bn_is_identity(name: str) -> None:
    torch.manual_seed(0)
    a = _build(name).state_dict()
    torch.manual_seed(0)
    b = _build(name).state_dict()
    torch.manual_seed(1)
    c = _build(name).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if k.endswith("weight"))
    for m in _build(name).modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


@pytest.mark.parametrize(
    ("name", "conv", "std"),
    [
        # RepDistiller: N(0, 2 / (k*k*out_channels)) for every conv.
        ("resnet56", "layer3.1.conv1", (2 / (9 * 64)) ** 0.5),
        ("vgg16", "block3.0", (2 / (9 * 512)) ** 0.5),
        ("wrn_40_2", "block3.layer.1.conv1", (2 / (9 * 128)) ** 0.5),
        # Option-A reference: fan-in He init, 2 / (k*k*in_channels); same here as in == out.
        ("resnet56_a", "layer3.1.conv1", (2 / (9 * 64)) ** 0.5),
        ("mobilenetv2", "conv2.0", (2 / 1280) ** 0.5),
    ],
)
def test_conv_init_scale(name: str, conv: str, std: float) -> None:
    torch.manual_seed(0)
    weight = _build(name).get_submodule(conv).weight
    assert abs(weight.std().item() / std - 1) < 0.05
    assert abs(weight.mean().item()) < 0.1 * std


# Deeper copies of an exported architecture run the same module classes and code paths, so by
# default every path is exported once (shortcut types, pools, heads); the rest are marked slow.
EXPORT_REPRESENTATIVES = {
    "resnet8",
    "resnet20_a",
    "resnet8x4",
    "vgg8",
    "vgg16_5pool_fc2",
    "wrn_16_2",
    "mobilenetv2",
}
EXPORT_CASES = [
    name if name in EXPORT_REPRESENTATIVES else pytest.param(name, marks=pytest.mark.slow)
    for name in ALL_NAMES
]


@pytest.mark.parametrize("name", EXPORT_CASES)
def test_strict_export(name: str) -> None:
    torch.manual_seed(0)
    model = _build(name).eval()
    x = torch.randn(1, 3, 32, 32)
    program = torch.export.export(model, (x,), strict=True)
    # Each aten.relu node must come from its own nn.ReLU module (what PT2E quantizers match).
    relu_sources = [
        list(n.meta["nn_module_stack"].values())[-1][0]
        for n in program.graph.nodes
        if n.target == torch.ops.aten.relu.default
    ]
    relu_names = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    assert sorted(relu_sources) == sorted(relu_names)
    with torch.no_grad():
        assert torch.allclose(program.module()(x), model(x), atol=1e-5)
