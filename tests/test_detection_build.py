"""The mmcv build step: which cached wheel fits, the C++20 compiler wrapper, the CUDA_HOME shim,
and that the environment the tests run in has mmcv's compiled ops."""

from __future__ import annotations

import subprocess
import sys

from kdbench.detection import build_mmcv
from kdbench.detection.build_mmcv import MMCV_VERSION, PREBUILT_TORCH, Target


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_prebuilt_wheel_is_used_only_for_matching_python_torch_and_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    target = Target("cp311", "linux_x86_64", f"{PREBUILT_TORCH}+cu130", "cpu")
    shared = tmp_path / "shared"
    prebuilt = _touch(shared / f"mmcv-{MMCV_VERSION}-cp311-cp311-linux_x86_64.whl")
    _touch(shared / f"mmcv-{MMCV_VERSION}-cp312-cp312-linux_x86_64.whl")
    assert build_mmcv.candidate_wheels(target, [shared]) == [prebuilt]
    for other in (Target("cp312", "linux_x86_64", PREBUILT_TORCH, "cpu"),
                  Target("cp311", "linux_aarch64", PREBUILT_TORCH, "cpu"),
                  Target("cp311", "linux_x86_64", "2.15.0", "cpu"),
                  Target("cp311", "linux_x86_64", PREBUILT_TORCH, "cuda")):
        assert prebuilt not in build_mmcv.candidate_wheels(other, [shared])


def test_own_cached_build_comes_first_and_is_keyed_by_torch_and_variant(tmp_path, monkeypatch):
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    target = Target("cp311", "linux_x86_64", "2.15.0+cu130", "cuda")
    own = _touch(build_mmcv.cache_dir() / target.key / target.wheel_name())
    assert "torch2.15.0+cu130-cuda" in target.key
    assert build_mmcv.candidate_wheels(target, [tmp_path / "none"]) == [own]
    cpu = Target("cp311", "linux_x86_64", "2.15.0+cu130", "cpu")
    assert build_mmcv.candidate_wheels(cpu, []) == []


def test_compiler_wrapper_raises_the_cxx_standard_and_passes_the_rest(tmp_path):
    wrapper = build_mmcv._wrapper(tmp_path / "cxx", "echo")
    out = subprocess.run([str(wrapper), "-O3", "-std=c++17", "a b.cpp", "-std=c++14", "-c"],
                         check=True, capture_output=True, text=True).stdout.split()
    assert out == ["-O3", "-std=c++20", "a", "b.cpp", "-std=c++20", "-c"]


def test_cuda_home_shim_wraps_only_nvcc(tmp_path):
    real = tmp_path / "cuda"
    for name in ("bin/nvcc", "bin/ptxas", "include/cuda.h", "lib64/libcudart.so"):
        _touch(real / name)
    shim = build_mmcv._cuda_home_with_wrapped_nvcc(tmp_path / "shim", real)
    assert (shim / "include").resolve() == real / "include"
    assert (shim / "bin" / "ptxas").resolve() == real / "bin" / "ptxas"
    nvcc = (shim / "bin" / "nvcc").read_text()
    assert str(real / "bin" / "nvcc") in nvcc and "-std=c++20" in nvcc


def test_this_environment_is_detected_and_has_the_compiled_ops():
    target = build_mmcv.detect_target(cuda=False)
    assert target.python_tag == f"cp{sys.version_info.major}{sys.version_info.minor}"
    assert target.variant == "cpu" and target.torch.startswith(target.torch_release)
    import mmcv
    from mmcv import _ext

    assert mmcv.__version__ == MMCV_VERSION and hasattr(_ext, "modulated_deform_conv_forward")


def test_no_wheel_and_no_compiler_is_one_clear_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(build_mmcv, "ops_available", lambda: False)
    monkeypatch.setattr(build_mmcv.shutil, "which", lambda name: None)
    built = []
    monkeypatch.setattr(build_mmcv, "build", lambda *a, **k: built.append(a))
    target = Target("cp311", "linux_x86_64", "2.15.0", "cpu")
    monkeypatch.setattr(build_mmcv, "detect_target", lambda cuda=None: target)
    assert build_mmcv.main(["ensure", "--wheel-dir", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert "neither a prebuilt wheel" in err and target.wheel_name() in err
    assert "C++ compiler" in err and "apt-get install g++" in err and "--wheel-dir" in err
    assert "Traceback" not in err and not built  # no pip build started
