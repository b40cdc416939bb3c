"""What this machine's CPU is and can do, read from Linux's /proc/cpuinfo (standard library only: the test run,
the benchmarks and the training subprocess all ask)."""

from __future__ import annotations

import platform

CPUINFO = "/proc/cpuinfo"


def _cpuinfo_field(name: str) -> str:
    try:
        with open(CPUINFO) as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith(name)), "")
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC 9R14 96-Core Processor"); benchmark figures and bfloat16 rounding depend
    on it."""
    return _cpuinfo_field("model name") or platform.processor() or "unknown CPU"


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16: bfloat16 matmuls run natively; elsewhere torch emulates them, slower than
    float32."""
    return bool({"avx512_bf16", "amx_bf16"} & set(_cpuinfo_field("flags").split()))
