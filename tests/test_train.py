"""The shared training loop: schedules, learning, NaN detection, resume after a kill."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdbench.benchmarks.config import TrainRecipe
from kdbench.benchmarks.data import BatchLoader, ImageSplit
from kdbench.benchmarks.errors import TrainingError
from kdbench.benchmarks.train import evaluate, fit, lr_at

CPU = torch.device("cpu")


def test_multistep_schedule_is_the_repdistiller_one():
    r = TrainRecipe()
    assert [lr_at(e, r) for e in (0, 149, 150, 179, 180, 209, 210, 239)] == pytest.approx(
        [0.05, 0.05, 0.005, 0.005, 0.0005, 0.0005, 0.00005, 0.00005])


def test_cosine_schedule_and_warmup():
    r = TrainRecipe(epochs=10, lr=0.1, schedule="cosine", warmup_epochs=2)
    assert lr_at(0, r) == pytest.approx(0.05) and lr_at(1, r) == pytest.approx(0.1)
    assert lr_at(2, r) == pytest.approx(0.1)
    assert lr_at(6, r) == pytest.approx(0.05)  # half way through the cosine part
    assert lr_at(9, r) < lr_at(8, r) < lr_at(7, r)


def _toy_split(n=128, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = (labels.view(-1, 1, 1, 1) * 60 + torch.randint(0, 20, (n, 3, 32, 32), generator=g))
    return ImageSplit(images.to(torch.uint8), labels)


def _loader(split, train=True, seed=0):
    return BatchLoader(split, 32, mean=(0.5,) * 3, std=(0.25,) * 3, train=train, seed=seed)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4))


def ce(batch, logits):
    return F.cross_entropy(logits, batch.y)


def test_fit_learns_a_separable_problem():
    split = _toy_split()
    model = _model()
    before = evaluate(model, _loader(split, train=False), CPU)["top1"]
    result = fit(model, ce, _loader(split), TrainRecipe(epochs=20, lr=0.05), device=CPU)
    after = evaluate(model, _loader(split, train=False), CPU)["top1"]
    assert after > max(before, 90.0)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.steps == 20 * 4


def test_nan_loss_stops_with_a_clear_error():
    def bad(batch, logits):
        return ce(batch, logits) * float("nan")

    with pytest.raises(TrainingError, match=r"loss became nan at epoch 1"):
        fit(_model(), bad, _loader(_toy_split()), TrainRecipe(epochs=2), device=CPU)


def test_a_killed_fit_resumes_to_the_same_weights(tmp_path):
    split, recipe = _toy_split(), TrainRecipe(epochs=4, lr=0.05, schedule="cosine")
    straight = _model()
    fit(straight, ce, _loader(split), recipe, device=CPU)

    class Killed(Exception):
        pass

    def kill_after_second_epoch(state):
        if state.epoch == 1:
            raise Killed

    resumed = _model()
    ckpt = tmp_path / "fit.ckpt"
    with pytest.raises(Killed):
        fit(resumed, ce, _loader(split), recipe, device=CPU, checkpoint=ckpt,
            after_epoch=kill_after_second_epoch)
    assert ckpt.exists()
    resumed = _model()  # a fresh process: nothing but the checkpoint survives
    result = fit(resumed, ce, _loader(split), recipe, device=CPU, checkpoint=ckpt)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]  # epoch 0 was not redone
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_hooks_see_every_step_and_epoch():
    steps, epochs = [], []
    fit(_model(), ce, _loader(_toy_split()), TrainRecipe(epochs=2), device=CPU,
        after_step=lambda s: steps.append(s.step), after_epoch=lambda s: epochs.append(s.epoch))
    assert steps == list(range(1, 9)) and epochs == [0, 1]


def test_evaluate_topk_and_mode_is_restored():
    class Fixed(nn.Module):
        def forward(self, x):
            return torch.tensor([[3.0, 2.0, 1.0]]).expand(len(x), 3)

    split = ImageSplit(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 2]))
    model = Fixed().train()
    acc = evaluate(model, BatchLoader(split, 2, mean=(0.0,), std=(1.0,), train=False), CPU,
                   topk=(1, 2))
    assert acc["top1"] == pytest.approx(100 / 3)
    assert acc["top2"] == pytest.approx(200 / 3)
    assert model.training
