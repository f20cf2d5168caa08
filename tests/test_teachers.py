"""Teacher cache: trained once, reused, keyed by what makes a teacher different."""

from __future__ import annotations

import pytest
import torch

from kdbench.benchmarks.atomic import save_torch
from kdbench.benchmarks.config import TrainRecipe
from kdbench.benchmarks.errors import ConfigError
from kdbench.benchmarks.registry import build_model
from kdbench.benchmarks.teachers import TeacherCache, score_key, sha256_file, teacher_key


def key(**changes):
    spec = dict(arch="resnet8", num_classes=100, data_fingerprint="abc", train_subset=None,
                recipe=TrainRecipe(), seed=0)
    spec.update(changes)
    return teacher_key(**spec)


def test_key_changes_with_everything_that_changes_the_teacher():
    base = key()
    assert base == key()
    for change in (dict(arch="resnet14"), dict(num_classes=10), dict(data_fingerprint="abd"),
                   dict(train_subset=1000), dict(recipe=TrainRecipe(epochs=239)), dict(seed=1)):
        assert key(**change) != base, change


def test_an_adversarially_trained_teacher_has_its_own_key():
    base = key()
    pgd10 = {"attack": {"eps": 8 / 255, "step_size": 2 / 255, "steps": 10, "random_start": True}}
    pgd1 = {"attack": {**pgd10["attack"], "steps": 1}}
    assert key(adversarial=None) == base  # the standard teacher's key is unchanged
    assert key(adversarial=pgd10) != base and key(adversarial=pgd10) == key(adversarial=pgd10)
    assert key(adversarial=pgd1) != key(adversarial=pgd10)


def _cache_calls(tmp_path, user=None):
    calls = {"train": 0}

    def train(model):
        calls["train"] += 1
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01)

    def get(cache):
        return cache.get("resnet8", key(), lambda: build_model("resnet8", 10), train,
                         lambda m: {"top1": 12.5, "top5": 40.0})

    return calls, get


def test_the_same_weights_saved_twice_have_one_sha256(tmp_path):
    # The teacher's sha256 is part of every run's config hash: a teacher retrained bit for bit
    # on another machine (or after the cache was cleared) must be the same configuration.
    weights = build_model("resnet8", num_classes=10).state_dict()
    save_torch(weights, tmp_path / "a" / "first.pt")
    save_torch(weights, tmp_path / "b" / "second.pt")
    assert sha256_file(tmp_path / "a" / "first.pt") == sha256_file(tmp_path / "b" / "second.pt")
    assert list(tmp_path.rglob("*.tmp")) == []


def test_trained_once_then_loaded_from_disk_with_its_hash(tmp_path):
    calls, get = _cache_calls(tmp_path)
    first, info = get(TeacherCache(tmp_path))
    assert calls["train"] == 1 and info.source == "trained"
    assert info.sha256 == sha256_file(tmp_path / "teachers" / info.path.split("/")[-1])
    second, info2 = get(TeacherCache(tmp_path))  # a new process: the memory cache is empty
    assert calls["train"] == 1 and info2.source == "cache" and info2.sha256 == info.sha256
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_user_checkpoint_is_used_instead_of_training(tmp_path):
    model = build_model("resnet8", 10)
    path = tmp_path / "mine.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    calls, get = _cache_calls(tmp_path)
    loaded, info = get(TeacherCache(tmp_path, {"resnet8": str(path)}))
    assert calls["train"] == 0 and info.source == "user" and info.sha256 == sha256_file(path)
    assert torch.equal(loaded.fc.weight, model.fc.weight)


def test_user_checkpoint_of_the_wrong_architecture_is_named(tmp_path):
    path = tmp_path / "wrong.pt"
    torch.save(build_model("resnet14", 10).state_dict(), path)
    _, get = _cache_calls(tmp_path)
    with pytest.raises(ConfigError, match="does not fit architecture 'resnet8'"):
        get(TeacherCache(tmp_path, {"resnet8": str(path)}))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save(build_model("resnet8", 10), path)  # a whole module, not a state_dict
    _, get = _cache_calls(tmp_path)
    with pytest.raises(ConfigError, match="weights_only=True"):
        get(TeacherCache(tmp_path, {"resnet8": str(path)}))


_LABELS = torch.arange(10) % 10


def _scored_get(cache, evaluations, labels=_LABELS, top1=12.5):
    def score(model):
        evaluations.append(1)
        return {"top1": top1, "top5": 40.0}

    return cache.get("resnet8", key(), lambda: build_model("resnet8", 10), lambda m: None, score,
                     score_key("abc", labels, 256, torch.device("cpu")))


def test_a_teacher_is_evaluated_once_per_weights_and_test_set(tmp_path):
    evaluations = []
    _, first = _scored_get(TeacherCache(tmp_path), evaluations)
    _, again = _scored_get(TeacherCache(tmp_path), evaluations, top1=99.0)  # a new process
    assert len(evaluations) == 1 and again.top1 == first.top1 == 12.5
    # Another test set (other labels) is evaluated, not read.
    _, other = _scored_get(TeacherCache(tmp_path), evaluations, labels=torch.zeros(10), top1=7.0)
    assert len(evaluations) == 2 and other.top1 == 7.0


def test_the_score_key_changes_with_what_the_score_depends_on():
    labels = torch.arange(100) % 10
    base = score_key("abc", labels, 256, torch.device("cpu"))
    assert base == score_key("abc", labels.clone(), 256, torch.device("cpu"))
    for changed in (score_key("abd", labels, 256, torch.device("cpu")),
                    score_key("abc", labels[:50], 256, torch.device("cpu")),
                    score_key("abc", labels.flip(0), 256, torch.device("cpu")),
                    score_key("abc", labels, 128, torch.device("cpu")),
                    score_key("abc", labels, 256, torch.device("meta"))):
        assert changed != base


def test_a_corrupt_stored_score_is_named(tmp_path):
    _scored_get(TeacherCache(tmp_path), [])
    (stored,) = (tmp_path / "teachers" / "scores").glob("*.json")
    stored.write_text("{not json")
    with pytest.raises(ConfigError, match=r"stored teacher score .* unreadable"):
        _scored_get(TeacherCache(tmp_path), [])
