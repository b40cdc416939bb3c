"""workbench.machine reads the CPU's model and bfloat16 support from /proc/cpuinfo (here a written copy)."""

from __future__ import annotations

import pytest

from workbench import machine

EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu vme avx512f avx512_bf16 avx512_vnni
processor\t: 1
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu vme avx512f avx512_bf16 avx512_vnni
"""


@pytest.fixture()
def cpuinfo(tmp_path, monkeypatch):
    def write(text: str | None):
        path = tmp_path / "cpuinfo"
        if text is not None:
            path.write_text(text)
        monkeypatch.setattr(machine, "CPUINFO", str(path))
    return write


def test_model_and_native_bf16_from_the_first_processor(cpuinfo):
    cpuinfo(EPYC)
    assert machine.cpu_model() == "AMD EPYC 9R14 96-Core Processor"
    assert machine.cpu_has_native_bf16() is True


@pytest.mark.parametrize("flags, native", [("fpu amx_bf16 amx_tile", True), ("fpu avx2 avx512f", False),
                                           ("fpu avx512_bf16x", False)])
def test_native_bf16_needs_avx512_bf16_or_amx_bf16(cpuinfo, flags, native):
    cpuinfo(f"model name\t: Some CPU\nflags\t\t: {flags}\n")
    assert machine.cpu_has_native_bf16() is native


def test_no_cpuinfo_means_no_native_bf16_and_a_model_name_still(cpuinfo):
    cpuinfo(None)  # not Linux (or /proc hidden)
    assert machine.cpu_has_native_bf16() is False
    assert machine.cpu_model()  # platform.processor() or "unknown CPU"
