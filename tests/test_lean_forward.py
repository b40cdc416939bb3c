"""The scheduler's lean forward (workbench/infer/lean.py) against transformers' own forward, on random models of
the real architectures it takes (llama with grouped heads, qwen2 with q/k/v biases and an untied output layer):
the same logits for a prompt, a chunk after cached columns, and padded decode rows; the same greedy answers
through the scheduler with base and LoRA rows; and the architectures and settings it must leave alone."""

from __future__ import annotations

import pytest

from chat_helpers import make_adapter
from helpers import make_tiny_model
from workbench.config.generation import GenerationArgs
from workbench.config.model import ModelArgs
from workbench.infer.engine import ChatEngine, RowSpec
from workbench.infer.lean import LeanForward
from workbench.infer.scheduler import Scheduler, new_cache
from workbench.infer.session import load_for_chat


def random_model(kind: str, **overrides):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    attention = overrides.pop("attn", "sdpa")
    options = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=kind == "llama")
    options.update(overrides)
    config = AutoConfig.for_model(kind, **options)
    torch.manual_seed(5)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=attention).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0, 0.5)  # initialised to zero: make them count
    return model


def reference(model, ids, positions, mask, cache):
    out = model(input_ids=ids, position_ids=positions, attention_mask=mask, past_key_values=cache, use_cache=True,
                logits_to_keep=1)
    return out.logits[:, -1, :].float()


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_logits_equal_transformers_for_prefill_chunks_and_padded_decode(kind):
    import torch

    model = random_model(kind)
    lean = LeanForward.build(model)
    assert lean is not None
    torch.manual_seed(0)
    with torch.inference_mode():
        ids = torch.randint(0, 300, (1, 12))
        caches = new_cache(), new_cache()
        # a whole prompt (causal, no mask), then a chunk after those 12 cached columns
        first = [f(ids[:, :7], torch.arange(7)[None], None, c) for f, c in zip((lean, lambda *a: reference(model, *a)),
                                                                                caches)]
        torch.testing.assert_close(first[0], first[1], rtol=1e-5, atol=1e-5)
        second = [f(ids[:, 7:], torch.arange(7, 12)[None], None, c)
                  for f, c in zip((lean, lambda *a: reference(model, *a)), caches)]
        torch.testing.assert_close(second[0], second[1], rtol=1e-5, atol=1e-5)

        # two rows, the first left-padded by 3 columns, then one decode step each
        batch = torch.randint(0, 300, (2, 6))
        valid = torch.ones(2, 6, dtype=torch.bool)
        valid[0, :3] = False
        positions = torch.stack([torch.tensor([0, 0, 0, 0, 1, 2]), torch.arange(6)])
        causal = torch.ones(6, 6, dtype=torch.bool).tril()
        mask = ((causal & valid[:, None, :]) | torch.eye(6, dtype=torch.bool))[:, None]
        caches = new_cache(), new_cache()
        out = [f(batch, positions, mask, c) for f, c in zip((lean, lambda *a: reference(model, *a)), caches)]
        torch.testing.assert_close(out[0], out[1], rtol=1e-5, atol=1e-5)
        step_mask = torch.cat([valid, torch.ones(2, 1, dtype=torch.bool)], 1)[:, None, None, :]
        step = [f(torch.tensor([[5], [9]]), torch.tensor([[3], [6]]), step_mask, c)
                for f, c in zip((lean, lambda *a: reference(model, *a)), caches)]
        torch.testing.assert_close(step[0], step[1], rtol=1e-5, atol=1e-5)


def test_architectures_and_settings_it_leaves_to_transformers():
    assert LeanForward.build(random_model("llama", attn="eager")) is None  # eager softmax rounds differently
    assert LeanForward.build(random_model("mistral", sliding_window=4)) is None
    assert LeanForward.build(random_model("mistral", sliding_window=None)) is not None
    assert LeanForward.build(random_model("llama", hidden_act="gelu")) is None
    gpt2 = random_model("gpt2", n_embd=64, n_layer=1, n_head=4, n_positions=64)
    assert LeanForward.build(gpt2) is None
    from accelerate.hooks import ModelHook, add_hook_to_module

    offloaded = random_model("llama")
    add_hook_to_module(offloaded.model.layers[1].mlp, ModelHook())  # as device_map offloading does
    assert LeanForward.build(offloaded) is None


@pytest.fixture(scope="module")
def qwen2_engine(bundled_model_dir, tmp_path_factory):
    from test_export_gguf import make_tiny_qwen2

    root = tmp_path_factory.mktemp("lean-qwen2")
    model_dir = make_tiny_qwen2(bundled_model_dir, root / "model")
    adapters = {"a": str(make_adapter(model_dir, root / "a", seed=1, r=8,
                                      targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                               "down_proj"))),
                "b": str(make_adapter(model_dir, root / "b", seed=2, r=4, targets=("q_proj", "v_proj")))}
    loaded = load_for_chat(ModelArgs(model_name_or_path=str(model_dir), infer_dtype="float32"), adapters)
    engine = ChatEngine(loaded, "qwen")
    yield engine
    engine.close("test over")


def test_scheduler_answers_equal_with_and_without_the_lean_forward(qwen2_engine):
    """Base and LoRA rows (different ranks and targets), prompts of different lengths prefilled together, 24
    greedy tokens each: the lean scheduler answers exactly what transformers' forward answers."""
    engine = qwen2_engine
    texts = ["Hello!", "Tell me about the sea in three sentences.", "2+2?", "What is the capital of France?"]
    specs = [RowSpec(engine.spec([{"role": "user", "content": t}], GenerationArgs()).prompt_ids, v, 24)
             for t, v in zip(texts, (None, "a", "b", "a"))]
    gen = GenerationArgs(max_new_tokens=24)
    batch = engine.start(specs, gen)
    batch.wait()
    assert engine.scheduler.stats()["forward"] == "lean"
    plain = Scheduler(engine.loaded, lean=False)
    try:
        from workbench.infer.engine import RowHandle

        stops = engine.stop_token_ids()
        with plain.arriving_together():
            handles = [plain.submit(RowHandle(RowSpec(s.prompt_ids, s.adapter, 24)), gen, stops) for s in specs]
        for handle in handles:
            handle.wait()
        assert plain.stats()["forward"] == "transformers"
        assert [h.token_ids for h in handles] == [r.token_ids for r in batch.rows]
        assert all(len(r.token_ids) > 0 for r in batch.rows)
    finally:
        plain.close("test over")


@pytest.mark.parametrize("path", ["native", "rows"])
def test_bfloat16_steps_through_the_faster_kernels_stay_close_and_leave_onednn_on(path):
    """Decode steps in bfloat16 may use PyTorch's own matmul kernel or the AVX512-BF16 rows kernel (each faster
    than oneDNN for a few rows on some CPUs; measured per model): logits within bfloat16 rounding of
    transformers', for one row and for two, and oneDNN switched back on after a native step."""
    import torch

    from workbench.infer.cpu_kernel import rows_kernel, why_not
    from workbench.infer.lean import matmul_plan

    if path == "rows" and rows_kernel() is None:
        pytest.skip(f"the rows kernel cannot run here: {why_not()}")
    model = random_model("qwen2").to(torch.bfloat16)
    lean = LeanForward.build(model)
    assert set(lean.plan.values()) <= {"native", "onednn", "rows"} and set(lean.plan) <= set(range(1, 9))
    float32 = LeanForward.build(random_model("qwen2"))
    plan = matmul_plan([p for group in float32.groups for p in group.values()])  # float32: MKL unless clearly slower
    assert set(plan.values()) <= {"rows", "onednn", "native"} and set(plan) <= set(range(1, 9))
    lean.plan = {1: path, 2: path}  # the path under test, whatever this CPU measured
    torch.manual_seed(1)
    ids = torch.randint(0, 300, (2, 9))
    with torch.inference_mode():
        for rows in (1, 2):
            caches = new_cache(), new_cache()
            lean(ids[:rows, :8], torch.arange(8).expand(rows, 8), None, caches[0])
            reference(model, ids[:rows, :8], torch.arange(8).expand(rows, 8), None, caches[1])
            mask = torch.ones(rows, 1, 1, 9, dtype=torch.bool)
            got = lean(ids[:rows, 8:], torch.full((rows, 1), 8), mask, caches[0])
            assert torch._C._get_mkldnn_enabled()
            want = reference(model, ids[:rows, 8:], torch.full((rows, 1), 8), mask, caches[1])
            torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)


def test_bfloat16_adapter_rows_through_the_rows_kernel_match_the_torch_path(bundled_model_dir, tmp_path):
    """Base and adapter rows in bfloat16 (LoRA on every projection, q/k/v biases): the rows kernel plus MultiLora's
    deltas gives the logits of PyTorch's matmuls plus the same deltas, within bfloat16 rounding — for a decode step
    of three rows, for a prompt of several rows at once, and for one row's short prompt (5 rows of the kernel)."""
    import torch

    from test_export_gguf import make_tiny_qwen2
    from workbench.infer.cpu_kernel import rows_kernel, why_not
    from workbench.infer.multilora import MultiLora

    if rows_kernel() is None:
        pytest.skip(f"the rows kernel cannot run here: {why_not()}")
    model_dir = make_tiny_qwen2(bundled_model_dir, tmp_path / "model")
    adapters = {name: str(make_adapter(model_dir, tmp_path / name, seed=seed, r=r,
                                       targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                "down_proj")))
                for name, seed, r in (("a", 1, 8), ("b", 2, 4))}
    loaded = load_for_chat(ModelArgs(model_name_or_path=str(model_dir), infer_dtype="bfloat16"), adapters)
    multilora = MultiLora.build(loaded.model)
    lean = LeanForward.build(loaded.model.get_base_model(), multilora)
    assert lean.kernel is not None and multilora._tables[0][0].dtype == torch.float32  # PEFT keeps LoRA in float32
    torch.manual_seed(2)
    prompt = torch.randint(0, 1000, (3, 6))
    results = {}
    with torch.inference_mode():
        for path in ("rows", "onednn"):
            lean.plan = {rows: path for rows in range(1, 9)}
            multilora.select([None, "a", "b"])
            cache = new_cache()
            first = lean(prompt, torch.arange(6).expand(3, 6), None, cache, multilora)  # 18 rows: PyTorch's matmul
            step = lean(prompt[:, :1], torch.full((3, 1), 6), torch.ones(3, 1, 1, 7, dtype=torch.bool), cache,
                        multilora)
            multilora.select(["a"])
            short = lean(prompt[:1, :5], torch.arange(5)[None], None, new_cache(), multilora)  # 5 rows, one adapter
            results[path] = first, step, short
    for got, want in zip(results["rows"], results["onednn"]):
        torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)


def test_a_bfloat16_output_gets_the_float32_lora_delta_rounded_once_as_peft_adds_it(bundled_model_dir, tmp_path):
    """PEFT adds its float32 delta to a bfloat16 base output and rounds the sum once; MultiLora's torch path does the
    same (as the step operations do), so the paths a step can take do not round the delta differently."""
    import torch

    from workbench.infer.multilora import MultiLora

    model_dir = make_tiny_model(bundled_model_dir, tmp_path / "model")
    adapter = make_adapter(model_dir, tmp_path / "a", seed=1, r=8, targets=("q_proj", "v_proj"))
    loaded = load_for_chat(ModelArgs(model_name_or_path=str(model_dir), infer_dtype="bfloat16"), {"a": str(adapter)})
    multilora = MultiLora.build(loaded.model)
    multilora.select([None, "a", "a"])
    a, b = multilora._tables[0]
    torch.manual_seed(0)
    x = torch.randn(3, 1, a.shape[-1], dtype=torch.bfloat16)
    output = torch.randn(3, 1, b.shape[-2], dtype=torch.bfloat16)
    delta = torch.bmm(torch.bmm(x[1:].float(), multilora._rows[0][0]), multilora._rows[0][1])
    want = output.clone()
    want[1:] = (output[1:].float() + delta).to(torch.bfloat16)
    multilora.add_delta(0, x, output)
    assert a.dtype == torch.float32 and not torch.equal(want[1:], output[1:] + delta.to(torch.bfloat16))
    torch.testing.assert_close(output, want, rtol=0, atol=0)


def test_float32_steps_through_the_rows_kernel_stay_within_float32_rounding():
    """The float32 rows kernel sums in another order than MKL: logits within float32 rounding of transformers' for a
    short prompt (6 rows of the kernel) and a decode step of two rows."""
    import torch

    from workbench.infer.cpu_kernel import rows_kernel, why_not

    if rows_kernel(torch.float32) is None:
        pytest.skip(f"the float32 rows kernel cannot run here: {why_not(torch.float32)}")
    model = random_model("qwen2")
    lean = LeanForward.build(model)
    assert lean.kernel is not None and lean.kernel.dtype == torch.float32
    lean.plan = {rows: "rows" for rows in range(1, 9)}
    torch.manual_seed(3)
    ids = torch.randint(0, 300, (2, 4))
    with torch.inference_mode():
        caches = new_cache(), new_cache()
        prompt = [f(ids[:, :3], torch.arange(3).expand(2, 3), None, c)
                  for f, c in zip((lean, lambda *a: reference(model, *a)), caches)]
        torch.testing.assert_close(prompt[0], prompt[1], rtol=1e-5, atol=1e-5)
        mask = torch.ones(2, 1, 1, 4, dtype=torch.bool)
        step = [f(ids[:, 3:], torch.full((2, 1), 3), mask, c) for f, c in zip((lean, lambda *a: reference(model, *a)),
                                                                               caches)]
        torch.testing.assert_close(step[0], step[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_decode_steps_through_the_step_operations_match_transformers(kind, dtype_name, monkeypatch):
    """With the rows kernel, a decode step's norms, rotary embedding, cache writes and LoRA deltas run as the step
    operations (kernels/step_ops.c): it is taken for one-token rows in the scheduler's cache — here two rows, one
    left-padded, 70 steps, the cache growing past its first buffer (prompt + 64 columns) — and its logits are
    transformers' within the dtype's rounding."""
    import torch

    from workbench.infer.cpu_kernel import rows_kernel, step_ops, step_ops_why_not, why_not

    dtype = getattr(torch, dtype_name)
    if rows_kernel(dtype) is None or step_ops() is None:
        pytest.skip(f"no rows kernel or step operations here: {why_not(dtype) or step_ops_why_not()}")
    model = random_model(kind).to(dtype)
    lean = LeanForward.build(model)
    assert lean.ops is not None
    lean.plan = {rows: "rows" for rows in range(1, 9)}
    taken = []
    monkeypatch.setattr(lean, "_decode_step", lambda *a, f=lean._decode_step: taken.append(1) or f(*a))
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 0.05, "atol": 0.05}
    torch.manual_seed(4)
    prompt = torch.randint(0, 300, (2, 6))
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[0, :3] = False
    positions = (valid.cumsum(1) - 1).clamp(min=0)
    mask = ((torch.ones(6, 6, dtype=torch.bool).tril() & valid[:, None, :]) | torch.eye(6, dtype=torch.bool))
    with torch.inference_mode():
        caches = new_cache(), new_cache()
        for forward, cache in zip((lean, lambda *a: reference(model, *a)), caches):
            forward(prompt, positions, mask[:, None], cache)
        for step in range(70):
            ids = torch.randint(0, 300, (2, 1))
            valid = torch.cat([valid, torch.ones(2, 1, dtype=torch.bool)], 1)
            at = positions[:, -1:] + 1 + step
            got, want = (forward(ids, at, valid[:, None, None, :], cache)
                         for forward, cache in zip((lean, lambda *a: reference(model, *a)), caches))
            torch.testing.assert_close(got, want, **tolerance)
    assert len(taken) == 70 and caches[0].layers[0].k_buf.shape[2] > 70


def test_a_cache_of_other_rows_is_never_written_by_pointer():
    """The step operations write into the cache's buffers by pointer, so a cache that holds other rows than the
    step (or another dtype) must not reach them: the step goes through PyTorch, which refuses the shapes."""
    import torch

    from workbench.infer.cpu_kernel import rows_kernel, step_ops

    if rows_kernel(torch.float32) is None or step_ops() is None:
        pytest.skip("no rows kernel or step operations here")
    model = random_model("llama")
    lean = LeanForward.build(model)
    lean.plan = {rows: "rows" for rows in range(1, 9)}
    with torch.inference_mode():
        cache = new_cache()
        lean(torch.randint(0, 300, (2, 5)), torch.arange(5).expand(2, 5), None, cache)
        with pytest.raises(RuntimeError):
            lean(torch.randint(0, 300, (3, 1)), torch.full((3, 1), 5), torch.ones(3, 1, 1, 6, dtype=torch.bool), cache)
