"""Pieces shared by several methods (losses, module surgery); each lives here once."""

from methods.common.losses import kd_kl

__all__ = ["kd_kl"]
