"""Teacher cache: train a teacher once, reuse it for every method.

Teachers are keyed by a hash of the architecture, the exact data (fingerprint, subset,
source), the training recipe and the seed. A user may instead give their own checkpoint
for an architecture; it is loaded with ``weights_only=True`` (no code from a pickle).
Each cached teacher carries the sha256 of its weights file and its test accuracy, so a
record can say exactly which teacher it was distilled from. The test accuracy is stored
beside the cache under a hash of the weights' sha256 and the test set's identity
(:func:`score_key`): an evaluation of the same weights on the same images on the same kind of
device is a deterministic function, so every later job reads it instead of paying a full
test pass (at a 60-job sweep on 2 cores, about 10 minutes of wall time).

The cache may be shared by concurrent jobs (a sweep on a shared filesystem): a file lock
per key lets one job train a teacher while the others wait for it and then load it. Under
torchrun only rank 0 takes the lock and decides, and all ranks then train or load together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from torch import nn

from kdbench.benchmarks import distributed
from kdbench.benchmarks.atomic import save_torch, write_json
from kdbench.benchmarks.config import TrainRecipe
from kdbench.benchmarks.errors import ConfigError

log = logging.getLogger("kdbench")

TEACHER_CACHE_VERSION = 1  # bump when teacher training changes in a way that matters


@dataclass(frozen=True)
class TeacherInfo:
    arch: str
    path: str
    sha256: str
    scores: dict[str, float]  # the task's test scores (top1/top5, mAP, ...)
    source: str  # "trained" | "cache" | "user"

    @property
    def top1(self) -> float:
        return self.scores["top1"]

    @property
    def top5(self) -> float:
        return self.scores["top5"]


def default_cache_dir() -> Path:
    root = os.environ.get("KDBENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "kdbench"
    )
    return Path(root)


def teacher_key(
    arch: str, num_classes: int, data_fingerprint: str, train_subset: int | None,
    recipe: TrainRecipe, seed: int, adversarial: Mapping[str, Any] | None = None,
) -> str:
    """The cache key of a teacher. ``adversarial`` (e.g. the PGD settings of adversarial
    training) enters the hash only when given, so it never collides with the standard
    teacher of the same architecture, data, recipe and seed, whose key it leaves unchanged."""
    spec = {
        "version": TEACHER_CACHE_VERSION,
        "arch": arch,
        "num_classes": num_classes,
        "data": data_fingerprint,
        "train_subset": train_subset,
        "recipe": dataclasses.asdict(recipe),
        "seed": seed,
    }
    if adversarial is not None:
        spec["adversarial"] = dict(adversarial)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def score_key(data_fingerprint: str, test_labels: torch.Tensor, eval_batch_size: int,
              device: torch.device) -> str:
    """What a teacher's test score depends on besides its weights: the data, the test
    images chosen (a subset is a deterministic function of the data and its size, so its
    labels identify it), the evaluation batch size, the device type and the torch version."""
    spec = {
        "data": data_fingerprint,
        "test_images": len(test_labels),
        "test_labels": hashlib.sha256(test_labels.cpu().numpy().tobytes()).hexdigest(),
        "eval_batch_size": eval_batch_size,
        "device": torch.device(device).type,
        "torch": torch.__version__,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_state_dict(model: nn.Module, path: Path, arch: str) -> None:
    """Load a user checkpoint safely; a mismatch names the architecture and the keys."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise ConfigError(f"teacher checkpoint for {arch!r} not found: {path}") from exc
    except Exception as exc:  # a corrupt or non-tensor pickle
        raise ConfigError(
            f"teacher checkpoint {path} could not be read as a state_dict "
            f"(loaded with weights_only=True): {exc}"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(
            f"teacher checkpoint {path} does not fit architecture {arch!r}: {exc}"
        ) from exc


class TeacherCache:
    """Looks up, trains or loads teachers; one instance per harness invocation."""

    def __init__(self, cache_dir: Path, user_checkpoints: dict[str, str] | None = None):
        self.dir = Path(cache_dir) / "teachers"
        self.user_checkpoints = dict(user_checkpoints or {})
        self._memory: dict[str, tuple[nn.Module, TeacherInfo]] = {}

    def get(
        self,
        arch: str,
        key: str,
        build: Callable[[], nn.Module],
        train: Callable[[nn.Module], None],
        evaluate: Callable[[nn.Module], dict[str, float]],
        score_key: str | None = None,
    ) -> tuple[nn.Module, TeacherInfo]:
        """The teacher for ``key``: user checkpoint, else disk cache, else train and cache.

        With ``score_key`` (see :func:`score_key`) the test score is read from the cache when
        these weights were already evaluated on that test set, and stored after evaluating.
        """
        if key in self._memory:
            return self._memory[key]
        if arch in self.user_checkpoints:
            path = Path(self.user_checkpoints[arch]).expanduser()
            model = build()
            load_state_dict(model, path, arch)
            result = model, self._info(arch, path, model, evaluate, "user", score_key)
        else:
            path = self.dir / f"{arch}-{key[:16]}.pt"
            model = build()
            with self._lock(path):
                # Checked under the lock: a job that waited finds the file its peer wrote.
                if distributed.broadcast_flag(path.is_file()):
                    try:
                        load_state_dict(model, path, arch)
                    except ConfigError as exc:
                        raise ConfigError(
                            f"the cached teacher {path} is unreadable (a cache entry kdbench "
                            f"wrote, e.g. truncated by a full disk): delete it, and its .json "
                            f"beside it, to train the teacher again ({exc})") from exc
                    result = model, self._info(arch, path, model, evaluate, "cache", score_key)
                else:
                    train(model)
                    if distributed.current().primary:
                        save_torch(model.state_dict(), path)
                    distributed.barrier()  # the file exists before any rank hashes it
                    info = self._info(arch, path, model, evaluate, "trained", score_key)
                    if distributed.current().primary:
                        self._write_meta(path, info)
                    result = model, info
        self._memory[key] = result
        return result

    def known_sha256(self, arch: str, key: str) -> str | None:
        """The sha256 of the teacher ``key`` would load, without training or loading it:
        the user's checkpoint or the cached file; None when it would be trained."""
        if arch in self.user_checkpoints:
            path = Path(self.user_checkpoints[arch]).expanduser()
        else:
            path = self.dir / f"{arch}-{key[:16]}.pt"
        return sha256_file(path) if path.is_file() else None

    @contextlib.contextmanager
    def _lock(self, path: Path) -> Iterator[None]:
        """Hold ``path``'s lock file (rank 0 only): one trainer per key across processes.

        An OS-level lock (flock): it is released when its holder dies, so a killed job
        never blocks the others.
        """
        if not distributed.current().primary:
            yield
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path.with_name(path.name + ".lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("teacher %s is being trained by another job; waiting for it (lock %s)",
                     path.name, lock.lock_file)
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def _info(self, arch: str, path: Path, model: nn.Module,
              evaluate: Callable[[nn.Module], dict[str, float]], source: str,
              score_key: str | None) -> TeacherInfo:
        sha = sha256_file(path)
        acc = self._stored_score(sha, score_key)
        if acc is None:
            acc = evaluate(model)
            if score_key is not None and distributed.current().primary:
                self._store_score(sha, score_key, acc)
        return TeacherInfo(arch=arch, path=str(path), sha256=sha, scores=dict(acc),
                           source=source)

    def _score_file(self, sha: str, score_key: str) -> Path:
        name = hashlib.sha256(f"{sha}:{score_key}".encode()).hexdigest()[:32]
        return self.dir / "scores" / f"{name}.json"

    def _stored_score(self, sha: str, score_key: str | None) -> dict[str, float] | None:
        if score_key is None:
            return None
        file = self._score_file(sha, score_key)
        # Every rank reads the score or every rank evaluates: evaluation may be collective.
        if not distributed.broadcast_flag(file.is_file()):
            return None
        try:
            stored = json.loads(file.read_text())
            # {"scores": {...}}; a file from before other tasks' scores: top1/top5 alone
            scores = stored.get("scores") or {k: stored[k] for k in ("top1", "top5")}
            acc = {name: float(value) for name, value in scores.items()}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"the stored teacher score {file} is unreadable (a cache entry kdbench wrote): "
                f"delete it to evaluate the teacher again ({exc})") from exc
        log.info("teacher %s: test score read from %s (these weights on this test set)",
                 sha[:12], file)
        return acc

    def _store_score(self, sha: str, score_key: str, acc: dict[str, float]) -> None:
        write_json({"sha256": sha, "score_key": score_key, "scores": dict(acc)},
                   self._score_file(sha, score_key),
                   indent=None, sort_keys=False)

    @staticmethod
    def _write_meta(path: Path, info: TeacherInfo) -> None:
        # For people browsing the cache; the harness reads the score from ``scores/``.
        write_json(dataclasses.asdict(info), path.with_suffix(".json"), sort_keys=False)
