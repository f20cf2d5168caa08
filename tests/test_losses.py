"""The shared Hinton KD term (methods/common/losses.py)."""

import torch
import torch.nn.functional as F

from kdbench.methods.common import kd_kl


def test_kd_is_zero_for_identical_logits():
    z = torch.randn(8, 100)
    assert kd_kl(z, z.clone(), 4.0).abs().item() < 1e-6


def test_kd_equals_batchmean_kl_times_t_squared():
    s, t = torch.randn(8, 10), torch.randn(8, 10)
    temp = 3.0
    want = F.kl_div(F.log_softmax(s / temp, 1), F.softmax(t / temp, 1),
                    reduction="batchmean") * temp**2
    assert torch.allclose(kd_kl(s, t, temp), want)


def test_no_gradient_reaches_the_teacher():
    s = torch.randn(4, 10, requires_grad=True)
    t = torch.randn(4, 10, requires_grad=True)
    kd_kl(s, t, 4.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None
