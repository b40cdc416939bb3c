"""The step operations (workbench/infer/kernels/step_ops.c through cpu_kernel.StepOps) against the PyTorch
expressions they replace in the lean forward's decode step: in bfloat16 the same bits (each intermediate rounded
where PyTorch rounds it), in float32 within float32 rounding; block-diagonal LoRA tables read block by block; and
the inputs they refuse, by name and shape."""

from __future__ import annotations

import pytest

from workbench.infer import cpu_kernel


@pytest.fixture(scope="module")
def ops():
    built = cpu_kernel.step_ops()
    if built is None:
        pytest.skip(f"the step operations cannot run here: {cpu_kernel.step_ops_why_not()}")
    return built


def assert_rounded_alike(got, expected):
    """float32: within float32 rounding. bfloat16: a float32 sum in another order may round to the neighbouring
    bfloat16 (which one depends on PyTorch's reduction order on this CPU): at most one step apart, and rarely."""
    import torch

    if got.dtype == torch.float32:
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        return
    torch.testing.assert_close(got.float(), expected.float(), rtol=2 ** -7, atol=1e-6)
    assert (got != expected).float().mean().item() <= 0.02


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float32"])
def test_add_rms_norm_is_the_residual_add_then_transformers_rms_norm(ops, dtype_name):
    import torch
    import torch.nn.functional as F

    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    hidden = (3 * torch.randn(3, 1, 100)).to(dtype)  # 100: a tail after the 16-lane sums
    delta, weight = torch.randn(3, 1, 100).to(dtype), (1 + 0.3 * torch.randn(100)).to(dtype)
    for given in (delta, None):
        expected_hidden = hidden + given if given is not None else hidden.clone()
        expected = weight * F.rms_norm(expected_hidden.float(), (100,), eps=1e-6).to(dtype)
        got_hidden, out = hidden.clone(), torch.empty_like(hidden)
        ops.add_rms_norm(got_hidden, given, weight, 1e-6, out)
        assert torch.equal(got_hidden, expected_hidden)  # one rounding, as torch's add
        assert_rounded_alike(out, expected)


@pytest.mark.parametrize("dtypes", [("bfloat16", "bfloat16"), ("float32", "float32"), ("bfloat16", "float32")])
def test_lora_delta_is_the_two_products_added_to_the_base_output(ops, dtypes):
    """x·Aᵀ·B added to each row's output, for two tokens per row (a short prompt) and a rank that is no multiple
    of the lanes; bfloat16 inputs with float32 tables (PEFT keeps a bfloat16 model's adapters in float32) are added
    as PEFT adds them: the float32 delta to the base output, rounded once."""
    import torch

    x_dtype, table_dtype = (getattr(torch, name) for name in dtypes)
    torch.manual_seed(1)
    x = torch.randn(3, 2, 70).to(x_dtype)
    a, b_t = (0.1 * torch.randn(3, 13, 70)).to(table_dtype), (0.1 * torch.randn(3, 13, 45)).to(table_dtype)
    base = torch.randn(3, 2, 45).to(x_dtype)
    delta = torch.bmm(torch.bmm(x.to(table_dtype), a.transpose(1, 2)), b_t)
    expected = (base.to(table_dtype) + delta).to(x_dtype)
    out = base.clone()
    ops.lora_delta(x, a, b_t, out)
    assert_rounded_alike(out, expected)


def test_block_diagonal_lora_tables_are_read_by_part(ops):
    """q, k, v side by side: ranks 4, 0 (k has no LoRA) and 2 over outputs 16, 8, 8. The off-diagonal blocks are
    never read (filled with NaN here, which would poison any output that read them) and k's outputs stay as they
    were."""
    import torch

    torch.manual_seed(2)
    x = torch.randn(2, 1, 32)
    a = torch.randn(2, 6, 32)
    b_t = torch.full((2, 6, 32), float("nan"))
    blocks = {(0, 4): (0, 16), (4, 6): (24, 32)}
    for (r0, r1), (n0, n1) in blocks.items():
        b_t[:, r0:r1, n0:n1] = torch.randn(2, r1 - r0, n1 - n0)
    base = torch.randn(2, 1, 32)
    out = base.clone()
    ops.lora_delta(x, a, b_t, out, ops.lora_parts([4, 0, 2], [16, 8, 8]))
    assert not out.isnan().any()
    assert torch.equal(out[..., 16:24], base[..., 16:24])
    for (r0, r1), (n0, n1) in blocks.items():
        expected = base[..., n0:n1] + torch.bmm(torch.bmm(x, a[:, r0:r1].transpose(1, 2)), b_t[:, r0:r1, n0:n1])
        torch.testing.assert_close(out[..., n0:n1], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float32"])
def test_rope_store_is_apply_rotary_pos_emb_and_the_cache_write(ops, dtype_name):
    import torch
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    dtype = getattr(torch, dtype_name)
    rows, heads, kv_heads, dim = 3, 6, 2, 32
    torch.manual_seed(3)
    qkv = torch.randn(rows, 1, (heads + 2 * kv_heads) * dim).to(dtype)
    angles = 40 * torch.rand(rows, 1, dim)
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    q, k, v = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], -1)
    q, k, v = (t.view(rows, 1, -1, dim).transpose(1, 2) for t in (q, k, v))
    expected_q, expected_k = apply_rotary_pos_emb(q, k, cos, sin)
    k_cache = torch.randn(rows, kv_heads, 9, dim).to(dtype)
    v_cache = torch.randn_like(k_cache)
    before = k_cache.clone(), v_cache.clone()
    q_out = torch.empty(rows, heads, dim, dtype=dtype)
    ops.rope_store(qkv, cos, sin, q_out, k_cache, v_cache, 5)
    assert torch.equal(q_out, expected_q[:, :, 0])
    assert torch.equal(k_cache[:, :, 5], expected_k[:, :, 0]) and torch.equal(v_cache[:, :, 5], v[:, :, 0])
    for cache, old in zip((k_cache, v_cache), before):  # every other column as it was
        assert torch.equal(cache[:, :, :5], old[:, :, :5]) and torch.equal(cache[:, :, 6:], old[:, :, 6:])


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float32"])
@pytest.mark.parametrize("heads, kv_heads, dim", [(4, 4, 32), (9, 3, 64), (4, 1, 80)])
def test_attend_is_sdpa_over_the_valid_columns_of_the_cache(ops, dtype_name, heads, kv_heads, dim):
    """One new token per row over a cache view (70 of 90 columns; 70 leaves a tail after the 16-wide blocks),
    grouped heads as the lean forward passes them to SDPA, the first row left-padded by 20 columns: SDPA's output
    within the dtype's rounding (its flash kernel sums in other blocks). A row with no valid column gets zeros."""
    import torch
    import torch.nn.functional as F

    dtype = getattr(torch, dtype_name)
    rows, length = 3, 70
    torch.manual_seed(4)
    k_cache = torch.randn(rows, kv_heads, 90, dim).to(dtype)
    v_cache = torch.randn_like(k_cache)
    q = torch.randn(rows, heads, dim).to(dtype)
    valid = torch.ones(rows, 90, dtype=torch.bool)
    valid[0, :20] = False
    keys, values = k_cache[:, :, :length], v_cache[:, :, :length]
    groups = heads // kv_heads
    expected = F.scaled_dot_product_attention(q.view(rows, kv_heads, groups, dim), keys, values,
                                              attn_mask=valid[:, None, None, :length], scale=dim ** -0.5)
    got = ops.attend(q, keys, values, valid[:, :length], dim ** -0.5)
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2 ** -7, "atol": 2e-3}
    torch.testing.assert_close(got.float(), expected.reshape(rows, heads, dim).float(), **tolerance)
    unmasked = F.scaled_dot_product_attention(q.view(rows, kv_heads, groups, dim), keys, values,
                                              scale=dim ** -0.5)
    torch.testing.assert_close(ops.attend(q, keys, values, None, dim ** -0.5).float(),
                               unmasked.reshape(rows, heads, dim).float(), **tolerance)
    valid[1] = False
    assert not ops.attend(q, keys, values, valid[:, :length], dim ** -0.5)[1].any()


def test_bad_inputs_are_refused_with_their_shapes_and_nothing_is_written(ops):
    import torch

    hidden, out = torch.randn(2, 8), torch.zeros(2, 8)
    with pytest.raises(ValueError, match=r"weight \(7,\)"):
        ops.add_rms_norm(hidden, None, torch.ones(7), 1e-6, out)
    with pytest.raises(ValueError, match="contiguous torch.float32 CPU tensor"):
        ops.add_rms_norm(hidden, torch.randn(8, 2).t(), torch.ones(8), 1e-6, out)
    with pytest.raises(ValueError, match="contiguous torch.bfloat16"):
        ops.add_rms_norm(hidden.bfloat16(), None, torch.ones(8), 1e-6, out.bfloat16())
    assert not out.any()
    x, base = torch.randn(2, 1, 8), torch.zeros(2, 1, 4)
    with pytest.raises(ValueError, match=r"A \(2, 3, 9\)"):
        ops.lora_delta(x, torch.randn(2, 3, 9), torch.randn(2, 3, 4), base)
    with pytest.raises(ValueError, match="rank at most"):
        ops.lora_delta(x, torch.randn(2, ops.max_rank + 1, 8), torch.randn(2, ops.max_rank + 1, 4), base)
    with pytest.raises(ValueError, match="float32 for bfloat16"):
        ops.lora_delta(x, torch.randn(2, 3, 8).bfloat16(), torch.randn(2, 3, 4).bfloat16(), base)
    with pytest.raises(ValueError, match="parts covering"):
        ops.lora_delta(x, torch.randn(2, 3, 8), torch.randn(2, 3, 4), base, ops.lora_parts([2], [4]))
    assert not base.any()
    cache = torch.zeros(2, 1, 9, 24)
    with pytest.raises(ValueError, match=r"head size a multiple of 16"):
        ops.attend(torch.randn(2, 2, 24), cache[:, :, :5], cache[:, :, :5], None, 0.2)
    cache = torch.zeros(2, 1, 9, 32)
    with pytest.raises(ValueError, match=r"mask \(2, 9\)"):
        ops.attend(torch.randn(2, 2, 32), cache[:, :, :5], cache[:, :, :5], torch.ones(2, 9, dtype=torch.bool), 0.2)
    with pytest.raises(ValueError, match=r"keys \(2, 1, 5, 32\)"):
        ops.attend(torch.randn(3, 2, 32), cache[:, :, :5], cache[:, :, :5], None, 0.2)  # 3 rows of q, 2 cached
    caches = torch.zeros(1, 1, 4, 8), torch.zeros(1, 1, 4, 8)
    with pytest.raises(ValueError, match="at column 4"):
        ops.rope_store(torch.randn(1, 24), torch.randn(1, 8), torch.randn(1, 8), torch.empty(1, 1, 8), *caches, 4)
    assert not caches[0].any()


def test_switched_off_step_operations_say_so(monkeypatch):
    monkeypatch.setenv("WORKBENCH_CPU_KERNEL", "0")
    monkeypatch.setattr(cpu_kernel, "_built", {})
    assert cpu_kernel.step_ops() is None
    assert "WORKBENCH_CPU_KERNEL=0" in cpu_kernel.step_ops_why_not()
