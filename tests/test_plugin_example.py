"""The out-of-tree example plugin (examples/kdbench_dkd) installs, is found through the
`kdbench.methods` entry point, and passes the plugin contract on the smoke budget."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "kdbench_dkd"
CHECK = """
import sys
from kdbench.benchmarks.registry import METHODS, known
assert "dkd" in known(METHODS), known(METHODS)
from kdbench.benchmarks.contract import check_contract
records = check_contract("dkd", sys.argv[1], cache_dir=sys.argv[2], data_root=sys.argv[3])
print("dkd top1", records[0]["metrics"]["top1"])
"""


def test_dkd_loss_reduces_to_hinton_kd_parts():
    sys.path.insert(0, str(EXAMPLE))
    try:
        from kdbench_dkd.method import dkd_loss
    finally:
        sys.path.remove(str(EXAMPLE))
    z = torch.randn(6, 10)
    y = torch.randint(0, 10, (6,))
    assert dkd_loss(z, z.clone(), y, 1.0, 8.0, 4.0).abs().item() < 1e-5
    assert dkd_loss(z, torch.randn(6, 10), y, 1.0, 8.0, 4.0).item() > 0


@pytest.mark.slow
def test_example_plugin_installs_and_honours_the_contract(tmp_path, cache_dir, cifar_root):
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(EXAMPLE)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr
    assert list(target.glob("kdbench_dkd-*.dist-info/entry_points.txt"))
    env = {**os.environ, "PYTHONPATH": str(target), "KDBENCH_PROGRESS": "0"}
    done = subprocess.run([sys.executable, "-c", CHECK, str(tmp_path / "run"), str(cache_dir),
                           str(cifar_root)], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "dkd top1" in done.stdout
