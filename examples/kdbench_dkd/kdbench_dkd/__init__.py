"""Decoupled Knowledge Distillation as an out-of-tree kdbench plugin."""

from kdbench_dkd.method import DKD, dkd_loss

__all__ = ["DKD", "dkd_loss"]
