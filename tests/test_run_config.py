"""The configuration hash, the shared teacher seed and CPU channels_last in the recipe."""

import dataclasses

import torch

from kdbench.benchmarks.config import TrainRecipe, load_suite
from kdbench.benchmarks.run_config import config_hash, run_config


def _hash(suite, budget, **method):
    return config_hash(run_config(suite, budget, method, "data-fp", "teacher-sha", "fp32"))


def test_hash_changes_with_what_determines_the_result_and_not_the_seed_count():
    suite = load_suite("fashion-mnist")
    smoke = suite.budget("smoke")
    base = _hash(suite, smoke, temperature=4.0)
    assert base == _hash(suite, smoke, temperature=4.0)
    assert base != _hash(suite, smoke, temperature=8.0)
    assert base != _hash(suite, dataclasses.replace(smoke, train_subset=1000), temperature=4.0)
    assert base == _hash(suite, dataclasses.replace(smoke, seeds=7), temperature=4.0)
    other = config_hash(run_config(suite, smoke, {"temperature": 4.0}, "data-fp",
                                   "another-teacher", "fp32"))
    assert base != other


def test_another_methods_settings_do_not_change_this_methods_hash():
    suite = load_suite("fashion-mnist")
    short = suite.budget("short")
    base = _hash(suite, short, temperature=4.0)
    edited = dataclasses.replace(short, methods={**short.methods, "lma": {"epochs": 99}})
    assert _hash(suite, edited, temperature=4.0) == base


def test_shared_teacher_seed():
    short = load_suite("fashion-mnist").budget("short")
    smoke = load_suite("fashion-mnist").budget("smoke")
    assert [short.teacher_seed_for(s) for s in range(3)] == [0, 0, 0]
    assert [smoke.teacher_seed_for(s) for s in range(3)] == [0, 1, 2]


def test_channels_last_on_cpu_only_when_asked():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not TrainRecipe().channels_last_on(cpu)
    assert TrainRecipe().channels_last_on(cuda)
    assert TrainRecipe(cpu_channels_last=True).channels_last_on(cpu)
    assert not TrainRecipe(channels_last=False, cpu_channels_last=True).channels_last_on(cpu)


def test_seeds_with_their_own_teachers_share_one_hash_a_shared_teacher_is_hashed_by_bytes():
    """A per-seed teacher differs in bytes from seed to seed, so its sha256 would make each
    seed its own configuration; one teacher for every seed is named by its bytes."""
    from kdbench.benchmarks.run_config import teacher_identity

    suite = load_suite("fashion-mnist")
    smoke, short = suite.budget("smoke"), suite.budget("short")
    assert smoke.teacher_seed is None and short.teacher_seed is not None
    seed0, seed1 = (teacher_identity(smoke, "resnet14", sha, False) for sha in ("aa", "bb"))
    assert seed0 == seed1
    assert teacher_identity(short, "resnet20", "aa", False) == "aa"
    assert teacher_identity(smoke, "resnet14", "aa", True) == "aa"  # the user's own file
