"""The scheduler's forward pass for Llama-family models, straight from the model's weights.

Transformers' forward costs far more than its arithmetic for a decode step of a small model: per layer about 45
tensor operations and a dozen module calls with their hooks, checks and mask builders; on a 2-core CPU that was
~60% of a bf16 step of the bundled 135M model. This forward does the same arithmetic with about 25 operations per
layer and no module calls: the same weights (nothing is copied), transformers' own rotary embedding and
``apply_rotary_pos_emb``, RMSNorm in the order transformers computes it, SDPA over the scheduler's KV cache with
its boolean mask, and each row's LoRA delta from :class:`~workbench.infer.multilora.MultiLora`. Decode steps that
run through the rows kernel (workbench/infer/cpu_kernel.py) do the rest of each layer with its step operations
(:meth:`LeanForward._decode_step`): about 10 calls per layer.

Only architectures whose decoder layer is exactly that are taken (:func:`LeanForward.build` returns None for the
rest, which keep transformers' forward): llama, mistral and qwen2 (q/k/v bias) with SiLU MLPs, full attention in
every layer, unquantized ``nn.Linear`` weights, SDPA attention, and no model-specific scaling. Greedy outputs equal
transformers' in float32 (tests/test_lean_forward.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

ARCHITECTURES = ("llama", "mistral", "qwen2")
PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")
GROUPS = {"qkv": ("q", "k", "v"), "o": ("o",), "gate_up": ("gate", "up"), "down": ("down",)}


def _linear_of(module) -> Any:
    """The plain ``nn.Linear`` under ``module`` (a PEFT LoRA wrapper's base layer), or None."""
    import torch

    base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
    return base if type(base) is torch.nn.Linear and base.weight.is_floating_point() else None


class _Projection:
    """Weights that read the same input, computed as one output with theirs side by side: through the rows kernel
    in one call, else one ``F.linear`` each (joined); then the rows' LoRA deltas as one (MultiLora groups)."""

    def __init__(self, parts: list[tuple], multilora, kernel, ops=None):
        self.ops = ops  # the step operations, for the LoRA deltas of steps through the rows kernel
        self.weights = [weight for weight, _, _ in parts]
        self.biases = [bias for _, bias, _ in parts]
        self.sizes = [weight.shape[0] for weight in self.weights]
        self.lora = (multilora.group([position for _, _, position in parts], self.sizes)
                     if multilora is not None else None)
        self.rows = kernel.group(self.weights, self.biases) if kernel is not None else None

    def __call__(self, x, rows: bool, lora):
        import torch
        import torch.nn.functional as F

        if rows:
            out = self.rows(x)
        elif len(self.weights) == 1:
            out = F.linear(x, self.weights[0], self.biases[0])
        else:
            out = torch.cat([F.linear(x, w, b) for w, b in zip(self.weights, self.biases)], -1)
        if lora is not None and self.lora is not None:
            lora.add_group_delta(self.lora, x, out, self.ops if rows else None)
        return out


class LeanForward:
    """``forward(input_ids, position_ids, mask, cache, lora)`` → last-position logits (float32), as the model's own
    forward with ``logits_to_keep=1`` computes them."""

    def __init__(self, model, layers: list[dict], multilora=None):
        core = model.model
        self.embed = core.embed_tokens.weight
        self.norm = (core.norm.weight, core.norm.variance_epsilon)
        self.rotary = core.rotary_emb
        self.head = model.lm_head.weight
        self.head_bias = model.lm_head.bias
        self.layers = layers  # per layer: norms (weight, eps) and projections (weight, bias, MultiLora position)
        config = model.config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        attention = core.layers[0].self_attn
        self.head_dim, self.scaling = attention.head_dim, attention.scaling
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        self.rope = apply_rotary_pos_emb
        self.kernel = rows_kernel_for([self.head] + [w for layer in layers for key in PROJECTIONS
                                                     for w in layer[key][:2] if w is not None])
        # The step operations (kernels/step_ops.c) where the rows kernel runs: a decode step's norms, rotary
        # embedding, cache writes and LoRA deltas as one call each (_decode_step).
        self.ops = None
        if self.kernel is not None:
            from workbench.infer.cpu_kernel import step_ops

            ops = step_ops()
            self.ops = ops if ops is not None and ops.raw(self.head.dtype) is not None else None
        # Projections that read one input run as one (q, k, v; gate, up): one kernel call and one LoRA delta each.
        self.groups = [{name: _Projection([layer[key] for key in keys], multilora, self.kernel, self.ops)
                        for name, keys in GROUPS.items()} for layer in layers]
        self.output = _Projection([(self.head, self.head_bias, None)], None, self.kernel)
        self.plan = matmul_plan([projection for group in self.groups for projection in group.values()])

    @classmethod
    def build(cls, model, multilora=None) -> "LeanForward | None":
        """For ``model`` (the base model the scheduler calls), or None where its forward is not the one above."""
        config = getattr(model, "config", None)
        core = getattr(model, "model", None)
        if config is None or core is None or getattr(config, "model_type", None) not in ARCHITECTURES:
            return None
        if getattr(config, "hidden_act", None) != "silu" or getattr(config, "pretraining_tp", 1) != 1:
            return None
        if any(t != "full_attention" for t in (getattr(config, "layer_types", None) or [])):
            return None
        if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
            return None  # mistral's window: the cache keeps every column, the mask would have to cut them
        if getattr(config, "_attn_implementation", "sdpa") != "sdpa":
            return None  # eager attention rounds differently (softmax in float32): kept on transformers' forward
        if type(getattr(model, "lm_head", None)).__name__ != "Linear":
            return None
        if any(hasattr(module, "_hf_hook") for module in model.modules()):
            return None  # accelerate moves weights in its hooks (offloading, layers split over devices)
        positions = {}
        if multilora is not None:
            positions = {id(module): i for i, module in enumerate(multilora.layers)}
        layers = []
        for layer in core.layers:
            attention, mlp = layer.self_attn, layer.mlp
            if type(layer.input_layernorm).__name__ not in ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm"):
                return None
            if getattr(attention, "sliding_window", None) or type(mlp.act_fn).__name__ != "SiLUActivation":
                return None
            projections = {}
            for name in PROJECTIONS:
                module = getattr(mlp if name in ("gate", "up", "down") else attention, f"{name}_proj")
                linear = _linear_of(module)
                if linear is None:
                    return None  # quantized (bitsandbytes) or another layer type
                projections[name] = (linear.weight, linear.bias, positions.get(id(module)))
            layers.append({"in_norm": (layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon),
                           "post_norm": (layer.post_attention_layernorm.weight,
                                         layer.post_attention_layernorm.variance_epsilon),
                           **projections})
        return cls(model, layers, multilora)

    def __call__(self, input_ids, position_ids, mask, cache, lora=None):
        kernel = self.plan.get(input_ids.numel(), "onednn")
        if kernel == "native":
            with onednn(False):
                return self._forward(input_ids, position_ids, mask, cache, lora, False)
        if (kernel == "rows" and self.ops is not None and input_ids.shape[1] == 1
                and _fills_in_place(cache, len(self.layers), input_ids.shape[0], self.head.dtype)):
            return self._decode_step(input_ids, position_ids, mask, cache, lora)
        return self._forward(input_ids, position_ids, mask, cache, lora, kernel == "rows")

    def _decode_step(self, input_ids, position_ids, mask, cache, lora):
        """One token per row through the rows kernel and the step operations: the arithmetic of :meth:`_forward`
        (bfloat16: the same roundings; sums in another order) with about a third of its calls. Each layer's
        residual add is done with the next norm."""
        import torch
        import torch.nn.functional as F

        batch = input_ids.shape[0]
        norm, rope, _ = self.ops.raw(self.head.dtype)
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        # Attention as one call too, where the mask is the scheduler's (a boolean row of columns per row) or none.
        columns = cache.layers[0].length + 1
        attend_here = self.ops.takes_attention(heads, kv_heads, head_dim) and (mask is None or (
            mask.dtype == torch.bool and mask.shape == (batch, 1, 1, columns) and mask.stride(3) == 1))
        valid = mask[:, 0, 0] if attend_here and mask is not None else None
        hidden = F.embedding(input_ids, self.embed)
        width = hidden.shape[-1]
        cos, sin = (t.contiguous() for t in self.rotary(hidden, position_ids))
        x = torch.empty_like(hidden)
        q = torch.empty(batch, heads, 1, head_dim, dtype=hidden.dtype)
        query = q.view(batch, kv_heads, heads // kv_heads, head_dim) if heads != kv_heads else q
        pointers = (hidden.data_ptr(), x.data_ptr(), cos.data_ptr(), sin.data_ptr(), q.data_ptr())
        hidden_at, x_at, cos_at, sin_at, q_at = pointers
        delta = None
        for index, (layer, group) in enumerate(zip(self.layers, self.groups)):
            weight, eps = layer["in_norm"]
            norm(hidden_at, None if delta is None else delta.data_ptr(), weight.data_ptr(), eps, x_at, batch, width)
            qkv = group["qkv"](x, True, lora)
            cached = cache.layers[index]
            column = cached.next_column()
            rope(qkv.data_ptr(), cos_at, sin_at, q_at, cached.k_buf.data_ptr(), cached.v_buf.data_ptr(), batch,
                 heads, kv_heads, head_dim, cached.k_buf.shape[2], column)
            if attend_here:
                attended = torch.empty(batch, heads, head_dim, dtype=hidden.dtype)
                self.ops.attend_unchecked(q.view(batch, heads, head_dim), cached.k_buf.data_ptr(),
                                          cached.v_buf.data_ptr(), valid, attended, kv_heads, cached.k_buf.shape[2],
                                          cached.length, self.scaling)
            else:
                attended = F.scaled_dot_product_attention(query, cached.keys, cached.values, attn_mask=mask,
                                                          scale=self.scaling)
            delta = group["o"](attended.reshape(batch, 1, heads * head_dim), True, lora)
            weight, eps = layer["post_norm"]
            norm(hidden_at, delta.data_ptr(), weight.data_ptr(), eps, x_at, batch, width)
            gate, up = group["gate_up"](x, True, lora).split(group["gate_up"].sizes, -1)
            delta = group["down"](F.silu(gate) * up, True, lora)
        weight, eps = self.norm
        norm(hidden_at, delta.data_ptr(), weight.data_ptr(), eps, x_at, batch, width)
        return self.output(x, True, None)[:, -1, :].float()

    def _forward(self, input_ids, position_ids, mask, cache, lora, rows: bool):
        import torch
        import torch.nn.functional as F

        batch, length = input_ids.shape
        hidden = F.embedding(input_ids, self.embed)
        cos, sin = self.rotary(hidden, position_ids)
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        groups = heads // kv_heads
        causal = False
        if mask is None and length > 1:  # no padding: causal, over the cached columns too
            past = cache.layers[0].get_seq_length() if cache.layers else 0
            if past:
                mask = torch.ones(length, past + length, dtype=torch.bool, device=input_ids.device).tril(past)
            else:
                causal = True

        def rms_norm(x, weight_eps):
            weight, eps = weight_eps
            if x.dtype == torch.float32:
                return weight * F.rms_norm(x, (x.shape[-1],), eps=eps)
            return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)

        for index, (layer, group) in enumerate(zip(self.layers, self.groups)):
            x = rms_norm(hidden, layer["in_norm"])
            q, k, v = group["qkv"](x, rows, lora).split(group["qkv"].sizes, -1)
            q = q.view(batch, length, heads, head_dim).transpose(1, 2)
            k = k.view(batch, length, kv_heads, head_dim).transpose(1, 2)
            v = v.view(batch, length, kv_heads, head_dim).transpose(1, 2)
            q, k = self.rope(q, k, cos, sin)
            keys, values = cache.update(k, v, index)
            # Grouped heads as transformers' SDPA path treats them: one query token → the query heads of a group
            # as that group's queries; longer → the key/value heads repeated.
            if groups > 1 and length == 1:
                q = q.reshape(batch, kv_heads, groups, head_dim)
            elif groups > 1:
                keys = keys[:, :, None].expand(batch, kv_heads, groups, *keys.shape[2:]).reshape(
                    batch, heads, *keys.shape[2:])
                values = values[:, :, None].expand(batch, kv_heads, groups, *values.shape[2:]).reshape(
                    batch, heads, *values.shape[2:])
            attended = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self.scaling,
                                                      is_causal=causal)
            attended = attended.reshape(batch, heads, length, head_dim).transpose(1, 2).reshape(
                batch, length, heads * head_dim)
            hidden = hidden + group["o"](attended, rows, lora)
            x = rms_norm(hidden, layer["post_norm"])
            gate, up = group["gate_up"](x, rows, lora).split(group["gate_up"].sizes, -1)
            hidden = hidden + group["down"](F.silu(gate) * up, rows, lora)
        last = rms_norm(hidden[:, -1:, :], self.norm)
        return self.output(last, rows, None)[:, -1, :].float()


def _fills_in_place(cache, layers: int, rows: int, dtype) -> bool:
    """Is ``cache`` the scheduler's preallocated one, already holding a prompt for these ``rows`` in the model's
    ``dtype`` (contiguous buffers, which the step operations write into by pointer)?"""
    cached = getattr(cache, "layers", None)
    return bool(cached) and len(cached) == layers and all(
        getattr(layer, "k_buf", None) is not None and all(
            buf.dtype == dtype and buf.shape[0] == rows and buf.is_contiguous() for buf in (layer.k_buf, layer.v_buf))
        for layer in cached)


def rows_kernel_for(tensors: list):
    """The rows kernel (workbench/infer/cpu_kernel.py) for these CPU weights' dtype (bfloat16 or float32) where every
    weight and bias suits it, else None."""
    import torch

    if not tensors or tensors[0].device.type != "cpu" or tensors[0].dtype not in (torch.bfloat16, torch.float32):
        return None
    from workbench.infer.cpu_kernel import rows_kernel

    dtype = tensors[0].dtype
    kernel = rows_kernel(dtype)
    if kernel is None or not all(t.dtype == dtype and t.is_contiguous() and t.device.type == "cpu" for t in tensors):
        return None
    return kernel


_plans: dict[tuple, dict[int, str]] = {}


def matmul_plan(projections: list) -> dict[int, str]:
    """For each row count of a step (1–8), the fastest way to run these bfloat16 or float32 CPU projections (a
    layer's q/k/v, o, gate/up, down), measured here on the model's own weights (a few hundred ms, once per model
    shape): ``"rows"`` (the rows kernel, where the projections have it), ``"native"`` (PyTorch's own CPU kernel) or
    ``"onednn"`` (PyTorch's default, also for every count not in the plan; in float32 that is MKL either way). On
    a 2-core AMD EPYC (Zen 4), for SmolLM2-135M's 202 MiB of bfloat16 layer weights: one row 7.8 ms (rows kernel)
    / 8.2 ms (native) / 17.7 ms (oneDNN); four rows 12.6 / 24.4 / 21.5 ms.
    In bfloat16 all accumulate exact products in float32; results differ in the last bfloat16 bit. oneDNN is
    PyTorch's switch for the whole process (``torch.backends.mkldnn``), so the scheduler's thread turns it off only
    during a step planned "native"."""
    import time

    import torch

    weights = [w for projection in projections for w in projection.weights]
    if not weights or weights[0].device.type != "cpu" or weights[0].dtype not in (torch.bfloat16, torch.float32):
        return {}
    dtype = weights[0].dtype
    sample, size = [], 0
    for projection in projections:  # more than a cache holds, but a few milliseconds even for a 7B model
        sample.append(projection)
        size += sum(w.numel() * w.element_size() for w in projection.weights)
        if size >= 64 * 2**20:
            break
    kernel = all(projection.rows is not None for projection in sample)
    if dtype == torch.float32 and not kernel:
        return {}  # PyTorch's float32 products (MKL) whatever the oneDNN switch says
    key = (tuple(tuple(w.shape) for p in sample for w in p.weights), dtype, kernel, torch.backends.mkldnn.enabled)
    if key in _plans:
        return _plans[key]

    def fastest(rows: int, path: str) -> float:
        inputs = [torch.zeros(rows, p.weights[0].shape[1], dtype=dtype) for p in sample]
        best = float("inf")
        with torch.inference_mode(), onednn(path == "onednn"):
            for _ in range(3):
                started = time.perf_counter()
                for projection, x in zip(sample, inputs):
                    projection(x, path == "rows", None)
                best = min(best, time.perf_counter() - started)
        return best

    paths = ["native"]
    if torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled:
        paths.append("onednn")
    if dtype == torch.float32:
        paths = [paths[-1]]  # one float32 product in PyTorch (MKL): the default as it is set
    if kernel:
        paths.append("rows")
    plan = {}
    for rows in range(1, 9):
        times = {path: fastest(rows, path) for path in paths}
        if dtype == torch.float32:
            # Only where clearly (10%) faster: it sums in another order than PyTorch, so float32 answers may differ
            # from transformers' in the last bits; small models, where a call costs more than the product, keep MKL.
            plan[rows] = "rows" if times["rows"] < 0.9 * times[paths[0]] else paths[0]
            continue
        # Within 10% of the fastest: the rows kernel, else oneDNN (PyTorch's default, the most used path).
        near = [p for p in ("rows", "onednn", "native") if times.get(p, float("inf")) <= 1.1 * min(times.values())]
        plan[rows] = near[0]
    _plans[key] = plan
    return plan


@contextmanager
def onednn(enabled: bool):
    """oneDNN on or off inside (torch.backends.mkldnn.flags also sets TF32 options, with a warning each time)."""
    import torch

    before = torch._C._get_mkldnn_enabled()
    torch._C._set_mkldnn_enabled(enabled)
    try:
        yield
    finally:
        torch._C._set_mkldnn_enabled(before)
