"""INT8 against compiled fp32 on this CPU: the speed-up the `int8` deploy rows depend on.

Quantized kernels differ most between instruction sets (AVX2, AVX-512 VNNI, AMX), so this
prints the ISA ATen dispatches to and what oneDNN was limited to, then times the same model
compiled as fp32 and as PT2E INT8 (``benchmarks/deploy.py``, exactly the harness's path),
interleaved in one process, at batch 1 and 64 on 1 thread and on all usable cores.

    python -m kdbench.benchmarks.perf.int8_speedup [--arch resnet8] [--rounds 10]
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python -m kdbench.benchmarks.perf.int8_speedup

Weights are random and calibration inputs are Gaussian: latency does not depend on the
values, only on the graph, so no dataset or training is needed.
"""

from __future__ import annotations

import argparse
import os

import torch

from kdbench.benchmarks.deploy import CompiledProgram, export_program, quantize_int8
from kdbench.benchmarks.measure.latency import compare_latency, default_settings
from kdbench.benchmarks.registry import build_model

INPUT = (3, 32, 32)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet8", help="zoo model (default: resnet8)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--target-round-s", type=float, default=0.2)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = build_model(args.arch, num_classes=10).eval()
    batches = (1, 64)
    fp32 = CompiledProgram(export_program(model, INPUT).module, INPUT, batches)
    calibration = [torch.randn(64, *INPUT) for _ in range(4)]
    int8 = CompiledProgram(quantize_int8(model, calibration, INPUT).module, INPUT, batches)
    print(f"{args.arch}: ATen ISA {torch.backends.cpu.get_cpu_capability()}, "
          f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', 'unset')}, "
          f"torch {torch.__version__}")
    results = compare_latency(fp32, int8, INPUT, default_settings("cpu"), rounds=args.rounds,
                              target_round_s=args.target_round_s)
    print(f"{'threads':>7} {'batch':>5} {'fp32 ms':>9} {'int8 ms':>9} {'speed-up':>9} "
          f"{'95 % CI':>15} noise")
    for r in results:
        ci = (f"[{r.speedup_ci_low:.2f}, {r.speedup_ci_high:.2f}]"
              if r.speedup_ci_low is not None else "–")
        print(f"{r.setting.threads:>7} {r.setting.batch:>5} "
              f"{r.teacher.round_median_ms:>9.3f} {r.student.round_median_ms:>9.3f} "
              f"{r.speedup:>8.2f}× {ci:>15} {r.noise}")


if __name__ == "__main__":
    main()
