"""Cross-entropy through the output layer in chunks of rows, with its gradients made in the forward pass.

The plain loss materialises the logits of every labelled position (rows × vocabulary, then a float32 copy, its
log-softmax and, in the backward pass, a gradient of the same size): 1.2 GB for 2,048 labelled tokens of a
152k-vocabulary Qwen model, more than the rest of a LoRA step's activations. Here the output layer and the loss
run ``CHUNK_ROWS`` rows at a time; each chunk's gradient with respect to the hidden states (and to the output
weight, when it trains) is computed at once — softmax minus one-hot — so nothing of the size of the logits is kept
for the backward pass and nothing is recomputed (the idea of Liger's fused linear cross-entropy, written with
plain torch ops so it runs on any device). Numbers match the plain path: the same matmul dtype (autocast's, else
the weight's), float32 log-sum-exp, the sum over labelled tokens.

Used by :class:`workbench.train.trainer.CausalLMTrainer` for models whose logits are exactly ``lm_head(hidden)``
(:func:`fused_output_layer`); others keep the plain path.
"""

from __future__ import annotations

import contextlib
import weakref

import torch

CHUNK_ROWS = 1024
# Causal LMs whose forward is logits = lm_head(hidden[:, logits_to_keep]) with nothing after it (no soft-capping,
# logit scale or logit division, which Gemma 2/3, Cohere and Granite apply).
PLAIN_OUTPUT_LAYER = {"llama", "mistral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "phi3", "smollm3", "olmo2",
                      "internlm3", "yi"}


def _compute_dtype(weight: torch.Tensor) -> torch.dtype:
    device = weight.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return weight.dtype


_cast: tuple = ()  # (weakref to a frozen weight, its version, its copy in the compute dtype): one entry


def _weight_in(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``weight`` in ``dtype``; a frozen weight's copy is kept while the weight is unchanged (its in-place version
    counter), so a float32 tied output layer is not cast again every step (autocast caches only trained weights)."""
    global _cast
    if weight.dtype == dtype or weight.requires_grad:
        return weight.to(dtype)
    if _cast and _cast[0]() is weight and _cast[1] == weight._version and _cast[2].dtype == dtype:
        return _cast[2]
    copy = weight.to(dtype)
    _cast = (weakref.ref(weight), weight._version, copy)
    return copy


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index: int, chunk_rows: int, want_hidden: bool,
                want_weight: bool):
        compute = _compute_dtype(weight)
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            w = _weight_in(weight, compute)
            h = hidden.to(compute)
            grad_hidden = torch.empty_like(h) if want_hidden else None
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_weight else None
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for start in range(0, h.shape[0], chunk_rows):
                rows = h[start: start + chunk_rows]
                target = targets[start: start + chunk_rows]
                valid = target != ignore_index
                safe = torch.where(valid, target, 0)
                logp = torch.log_softmax((rows @ w.T).float(), dim=-1)  # one fused pass over the chunk
                total -= (logp.gather(1, safe[:, None]).squeeze(1) * valid).sum()
                if grad_hidden is None and grad_weight is None:
                    continue
                # d(sum of losses)/d(logits) = softmax - one-hot, zero on unlabelled rows; built in logp's memory.
                grad = logp.exp_()
                grad[torch.arange(grad.shape[0], device=grad.device), safe] -= 1
                grad.mul_(valid[:, None])
                grad = grad.to(compute)
                if grad_hidden is not None:
                    grad_hidden[start: start + chunk_rows] = grad @ w
                if grad_weight is not None:
                    grad_weight += (grad.T @ rows).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        return (None if grad_hidden is None else (grad_hidden * grad_output).to(hidden_dtype),
                None if grad_weight is None else (grad_weight * grad_output).to(weight_dtype),
                None, None, None, None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                         ignore_index: int = -100, chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """Sum over labelled rows of cross_entropy(hidden @ weight.T, targets); hidden [N, H], weight [V, H]."""
    grad = torch.is_grad_enabled()  # (a Function's forward always runs without grad: decide here)
    return _LinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1),
                                     ignore_index, chunk_rows, grad and hidden.requires_grad,
                                     grad and weight.requires_grad)


def fused_output_layer(model) -> torch.nn.Linear | None:
    """The output layer when the loss may take the hidden states and run it itself, else None: a plain
    ``nn.Linear`` without bias (not a LoRA/quantized wrapper) of an architecture that adds nothing after it."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(inner, "config", None)
    if getattr(config, "model_type", None) not in PLAIN_OUTPUT_LAYER:
        return None
    get = getattr(inner, "get_output_embeddings", None)
    head = get() if get is not None else None
    if type(head) is not torch.nn.Linear or head.bias is not None:
        return None
    return head


@contextlib.contextmanager
def hidden_states_as_logits(model):
    """Within the block the model's forward returns the final hidden states (of the ``logits_to_keep`` positions)
    as its logits: the output layer is swapped for an identity, through the model's own forward (so DDP's hooks
    still run), and put back afterwards."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = inner.get_output_embeddings()
    inner.set_output_embeddings(torch.nn.Identity())
    try:
        yield head
    finally:
        inner.set_output_embeddings(head)
