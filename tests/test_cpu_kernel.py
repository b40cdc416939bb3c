"""The rows kernels (workbench/infer/cpu_kernel.py; bfloat16 with AVX512-BF16, float32 with any vector unit): their
products against an exact reference, the inputs they refuse, and each reason one is not used (switched off, no
compiler, a CPU without AVX512-BF16)."""

from __future__ import annotations

import pytest

from workbench.infer import cpu_kernel


def reference(x, weight, bias=None):
    """The exact float32 sum of the bfloat16 products (float64 here), rounded once to bfloat16."""
    out = x.double() @ weight.double().T
    if bias is not None:
        out = out + bias.double()
    return out.bfloat16()


def kernel_or_skip():
    kernel = cpu_kernel.rows_kernel()
    if kernel is None:
        pytest.skip(f"the rows kernel cannot run here: {cpu_kernel.why_not()}")
    return kernel


@pytest.mark.parametrize("in_features", [64, 576, 40, 1000])  # 40 and 1000: a tail shorter than 32 columns
def test_products_equal_the_rounded_float32_sum_for_one_to_eight_rows(in_features):
    import torch

    kernel = kernel_or_skip()
    torch.manual_seed(in_features)
    weight = torch.randn(97, in_features).bfloat16()
    bias = torch.randn(97).bfloat16()
    for rows in range(1, kernel.max_rows + 1):
        x = torch.randn(rows, in_features).bfloat16()
        for b in (None, bias):
            got, want = kernel(x, weight, b), reference(x, weight, b)
            assert got.dtype == torch.bfloat16 and got.shape == (rows, 97)
            # float32 summation in another order: at most one bfloat16 step apart, nearly all equal
            step = want.float().abs().clamp_min(1e-3) * 2.0**-7
            assert ((got.float() - want.float()).abs() <= step).all()
            assert (got == want).float().mean() > 0.9


def test_a_group_of_weights_is_one_projection_side_by_side():
    """q, k and v (k without a bias) in one call: the output F.linear gives with the concatenated weights."""
    import torch

    kernel = kernel_or_skip()
    torch.manual_seed(3)
    weights = [torch.randn(n, 96).bfloat16() for n in (64, 16, 16)]
    biases = [torch.randn(64).bfloat16(), None, torch.randn(16).bfloat16()]
    group = kernel.group(weights, biases)
    joined_bias = torch.cat([b if b is not None else torch.zeros(16, dtype=torch.bfloat16) for b in biases])
    for rows in (1, 3, 8):
        x = torch.randn(rows, 1, 96).bfloat16()
        got, want = group(x), reference(x, torch.cat(weights), joined_bias)
        assert got.shape == (rows, 1, 96)
        assert ((got.float() - want.float()).abs() <= want.float().abs().clamp_min(1e-3) * 2.0**-7).all()
    with pytest.raises(ValueError, match="one input size"):
        kernel.group([weights[0], torch.zeros(4, 32, dtype=torch.bfloat16)], [None, None])
    with pytest.raises(ValueError, match="output size"):
        kernel.group(weights[:1], [torch.zeros(3, dtype=torch.bfloat16)])


def test_leading_dimensions_and_a_non_contiguous_input():
    import torch

    kernel = kernel_or_skip()
    torch.manual_seed(0)
    weight = torch.randn(48, 64).bfloat16()
    x = torch.randn(2, 1, 128).bfloat16()[..., ::2]  # a strided view: copied before the call
    got = kernel(x, weight)
    assert got.shape == (2, 1, 48)
    torch.testing.assert_close(got, torch.nn.functional.linear(x, weight), rtol=0.02, atol=0.02)


def test_inputs_it_cannot_take_are_refused_with_the_shapes():
    import torch

    kernel = kernel_or_skip()
    weight = torch.zeros(8, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="9 rows"):
        kernel(torch.zeros(9, 64, dtype=torch.bfloat16), weight)
    with pytest.raises(ValueError, match="float32"):
        kernel(torch.zeros(1, 64), weight)
    with pytest.raises(ValueError, match=r"\(8, 64\)"):
        kernel(torch.zeros(1, 32, dtype=torch.bfloat16), weight)
    with pytest.raises(ValueError, match="bias"):
        kernel(torch.zeros(1, 64, dtype=torch.bfloat16), weight, torch.zeros(8))
    assert not kernel.takes(weight.float()) and not kernel.takes(weight.T) and kernel.takes(weight)


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A process that has not built the kernel yet, with its own home."""
    monkeypatch.setattr(cpu_kernel, "_built", {})
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    return tmp_path


def test_switched_off_by_the_environment(fresh, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CPU_KERNEL", "0")
    assert cpu_kernel.rows_kernel() is None
    assert "WORKBENCH_CPU_KERNEL=0" in cpu_kernel.why_not()


def test_a_missing_compiler_is_named(fresh, monkeypatch):
    if cpu_kernel.platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("not an x86-64 machine: the architecture is the reason given first")
    monkeypatch.setenv("CC", str(fresh / "no-such-cc"))
    assert cpu_kernel.rows_kernel() is None
    assert "no-such-cc" in cpu_kernel.why_not()
    assert not (fresh / "kernels").exists() or not any((fresh / "kernels").glob("*.so"))


def test_float32_products_equal_the_float32_sum_up_to_its_order():
    """The float32 kernel: rows 1–8, a tail shorter than 16 columns, biases, a group — within float32 summation
    error of the exact sum (MKL's own error is of the same size)."""
    import torch

    kernel = cpu_kernel.rows_kernel(torch.float32)
    if kernel is None:
        pytest.skip(f"the float32 rows kernel cannot run here: {cpu_kernel.why_not(torch.float32)}")
    torch.manual_seed(7)
    weights, biases = [torch.randn(40, 300), torch.randn(24, 300)], [torch.randn(40), None]
    group = kernel.group(weights, biases)
    joined, bias = torch.cat(weights).double(), torch.cat([biases[0], torch.zeros(24)]).double()
    for rows in range(1, kernel.max_rows + 1):
        x = torch.randn(rows, 300)
        want = x.double() @ joined.T + bias
        got = group(x)
        assert got.dtype == torch.float32 and got.shape == (rows, 64)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)
        mkl = torch.nn.functional.linear(x, torch.cat(weights), bias.float())
        assert (got.double() - want).abs().max() <= 4 * (mkl.double() - want).abs().max() + 1e-5
    with pytest.raises(ValueError, match="bfloat16"):
        group(torch.zeros(1, 300, dtype=torch.bfloat16))
    assert not kernel.takes(weights[0].bfloat16())


def test_a_cpu_without_avx512_bf16_is_said_so(fresh, monkeypatch):
    """The source's own #error (what -march=native gives on such a CPU), from a copy that fails the same way here."""
    if cpu_kernel.platform.machine().lower() not in ("x86_64", "amd64") or not cpu_kernel.shutil.which("gcc"):
        pytest.skip("needs gcc on x86-64")
    source = fresh / "rows_bf16.c"
    source.write_text('#error "this CPU has no AVX512-BF16"\n')
    monkeypatch.setitem(cpu_kernel.SOURCES, "bfloat16", source)
    assert cpu_kernel.rows_kernel() is None
    assert cpu_kernel.why_not() == "this CPU has no AVX512-BF16"


def test_the_build_is_cached_per_source_and_cpu(fresh):
    import torch

    assert cpu_kernel.rows_kernel(torch.float16) is None  # no kernel for half precision: PyTorch's
    if cpu_kernel.rows_kernel() is None:
        pytest.skip(f"the rows kernel cannot run here: {cpu_kernel.why_not()}")
    built = list((fresh / "kernels").glob("rows_bf16-*.so"))
    assert len(built) == 1
    cpu_kernel._built.clear()
    stamp = built[0].stat().st_mtime_ns
    assert cpu_kernel.rows_kernel() is not None
    assert built[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt
