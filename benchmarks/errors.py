"""Errors a user can act on: each message names what is wrong and what would be right."""

from __future__ import annotations

from collections.abc import Iterable


class KdbenchError(Exception):
    """Base class of every error the CLI reports as a one-line message (no traceback)."""


class UnknownNameError(KdbenchError, KeyError):
    """A method, model, dataset or suite name that is not registered."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        self.kind, self.name, self.known = kind, name, sorted(known)
        super().__init__(f"unknown {kind} {name!r}; known {kind}s: {', '.join(self.known)}")

    def __str__(self) -> str:  # KeyError would quote the whole message
        return self.args[0]


class ConfigError(KdbenchError, ValueError):
    """A config key or value that is not allowed."""


class DatasetError(KdbenchError, FileNotFoundError):
    """A dataset that is missing or unreadable; says where it looked and how to provide it."""


class TrainingError(KdbenchError, RuntimeError):
    """Training diverged (NaN/inf loss) or otherwise cannot continue."""


class RunsFailedError(KdbenchError):
    """Some runs of an invocation failed; the others ran and their records were written."""

    def __init__(self, failures: list[str], total: int):
        self.failures = failures
        super().__init__(f"{len(failures)} of {total} runs failed (each is recorded as "
                         "seedN.failed.json beside its record): " + "; ".join(failures))
