"""The shared loop across processes: DDP under torchrun (gloo, 2 CPU processes) matches one
process with the same global batch, and a run killed mid-epoch (SIGTERM, SIGKILL) resumes
to exactly the weights of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("fit_worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "KDBENCH_PROGRESS": "0"}


def _run(*args: str | Path, timeout: float = 180) -> None:
    done = subprocess.run([sys.executable, *map(str, args)], env=ENV, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    """The reference: one process, global batch 32, 3 epochs of 4 steps, no checkpoint."""
    out = tmp_path_factory.mktemp("single") / "single.pt"
    _run(WORKER, out)
    return torch.load(out, weights_only=True)


def test_ddp_two_processes_equal_one_process_with_the_same_global_batch(single, tmp_path):
    out, ckpt = tmp_path / "ddp.pt", tmp_path / "ddp.ckpt"
    _run("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", WORKER, out,
         "--ckpt", ckpt)
    ddp = torch.load(out, weights_only=True)
    assert ddp["world_size"] == 2 and ddp["steps"] == single["steps"] == 12
    # Global-batch loss after every epoch (12 steps in all) within float32 reordering noise.
    assert ddp["losses"] == pytest.approx(single["losses"], rel=1e-5, abs=0)
    assert single["losses"][-1] < single["losses"][0]  # it did train
    for name, value in single["state"].items():
        torch.testing.assert_close(ddp["state"][name], value, rtol=0, atol=5e-5)
    # A trained parameter outside the model has its gradient averaged too.
    torch.testing.assert_close(ddp["scale"], single["scale"], rtol=0, atol=5e-5)
    assert ddp["scale"] != 1.0
    # Evaluation gathered over both shards: the same counts as one process on all images.
    assert ddp["acc"] == single["acc"]
    # Only rank 0 wrote the per-epoch checkpoint.
    assert out.with_suffix(".saves").read_text().split() == ["0", "0", "0"]
    assert torch.load(ckpt, weights_only=True)["epoch"] == 3


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_mid_epoch_then_resumed_ends_with_the_same_weights(sig, single, tmp_path):
    out, ckpt, ready = tmp_path / "run.pt", tmp_path / "fit.ckpt", tmp_path / "ready"
    cmd = [sys.executable, str(WORKER), str(out), "--ckpt", str(ckpt)]
    # Step 6 is the 2nd of epoch 2 (4 steps per epoch): the epoch-1 checkpoint exists.
    proc = subprocess.Popen([*cmd, "--hang-at", "1", "6", "--ready", str(ready)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while not ready.exists():
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.time() < deadline, "the run never reached the kill point"
        time.sleep(0.05)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == -sig
    assert not out.exists()
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1  # intact after the kill
    assert not list(tmp_path.glob("*.tmp"))

    _run(*cmd[1:])  # the same command again resumes from the checkpoint
    resumed = torch.load(out, weights_only=True)
    assert resumed["losses"] == single["losses"][1:]  # epochs 2 and 3 only, same losses
    for name, value in single["state"].items():
        assert torch.equal(resumed["state"][name], value), name
    assert torch.equal(resumed["scale"], single["scale"])
