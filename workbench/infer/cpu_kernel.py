"""Small C kernels for the projections of a decode step's few rows on CPUs (kernels/rows_bf16.c, rows_f32.c).

A decode step multiplies 1–8 rows by every weight. PyTorch's CPU kernels are slow at those shapes: on a 2-core AMD
EPYC (Zen 4), bfloat16 two rows cost 1.5x one row and four rows 2.9x (oneDNN: 2.0–2.5x a native row), and MKL's
float32 products read the weights at 6–14 GB/s; so base + adapters side by side and concurrent API clients cost
nearly a full answer each. These kernels read each weight row once for all rows: in bfloat16 (AVX512-BF16's dot
product) 1–3 rows at about the cost of one and 4–8 rows at about 1.5x; in float32 (GCC vector extensions: AVX-512,
AVX2, ...) one row in half MKL's time (bench/chat_latency.py).

Each is compiled on first use with the system's C compiler (``$CC``, else ``gcc``/``cc``; ``-O3 -march=native
-fopenmp``; about a second) into ``$WORKBENCH_HOME/kernels`` under a name that hashes the source, the flags and
this CPU, and loaded with ctypes (the GIL is released while it runs) after torch: it asks for ``libgomp.so.1`` by
name, which then is torch's own copy — one OpenMP thread pool, not two competing for the cores. Where there is no
compiler, no AVX512-BF16 (for the bfloat16 one), not x86-64, or ``WORKBENCH_CPU_KERNEL=0``, :func:`rows_kernel`
returns None and says why once in the log; the engine then keeps PyTorch's kernels. bfloat16 results are the
float32 sum of exact products rounded once, like oneDNN's; float32 results are sums in another order than MKL's.

:func:`step_ops` builds kernels/step_ops.c the same way (any x86-64 vector unit; no FMA contraction): the rest of
a decode step — residual add + RMSNorm, rotary embedding + KV-cache write, attention over the cache, each row's
LoRA delta — as one call each instead of several PyTorch operations, rounded where PyTorch rounds.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from workbench.paths import home

SOURCES = {"bfloat16": Path(__file__).resolve().parent / "kernels" / "rows_bf16.c",
           "float32": Path(__file__).resolve().parent / "kernels" / "rows_f32.c"}
STEP_OPS_SOURCE = Path(__file__).resolve().parent / "kernels" / "step_ops.c"
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]
# The step operations reproduce PyTorch's separate multiplies and adds: no fused multiply-add may merge them.
STEP_OPS_FLAGS = [*FLAGS, "-ffp-contract=off"]
log = logging.getLogger(__name__)

_lock = threading.Lock()
_built: dict[str, tuple] = {}  # dtype name → (RowsKernel | None, the reason it is None)


class RowsKernel:
    """``kernel(x, weight, bias)`` = ``F.linear(x, weight, bias)`` for CPU tensors of its :attr:`dtype` whose leading
    dimensions hold at most :attr:`max_rows` rows; :meth:`group` prepares weights sharing an input (q, k, v) as one
    call."""

    def __init__(self, library: ctypes.CDLL, dtype):
        self.dtype = dtype
        self._call = library.rows_linear
        self._call.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int, ctypes.c_void_p] + [ctypes.c_int] * 3
        self._call.restype = ctypes.c_int
        library.rows_max.restype = ctypes.c_int
        self.max_rows = library.rows_max()

    def takes(self, weight) -> bool:
        import torch

        return (weight.dtype == self.dtype and weight.device.type == "cpu" and weight.dim() == 2
                and weight.is_contiguous())

    def group(self, weights: list, biases: list) -> "RowsGroup":
        """``weights`` (each ``[out_i, in]``) and their biases (or None) as one projection: its output is the
        outputs side by side, as ``F.linear`` with the concatenated weights gives them (nothing is copied)."""
        import torch

        if not weights or any(not self.takes(w) or w.shape[1] != weights[0].shape[1] for w in weights):
            raise ValueError(f"rows kernel: a group needs contiguous 2-D {self.dtype} CPU weights of one input size")
        for bias, weight in zip(biases, weights):
            if bias is not None and (bias.dtype != self.dtype or not bias.is_contiguous()
                                     or bias.shape != (weight.shape[0],)):
                raise ValueError(f"rows kernel: each bias must be a contiguous {self.dtype} vector of its output size")
        return RowsGroup(self, list(weights), list(biases))

    def __call__(self, x, weight, bias=None):
        return self.group([weight], [bias])(x)


class RowsGroup:
    """A prepared call: the pointer tables are built once (the tensors are held, so they stay valid)."""

    def __init__(self, kernel: RowsKernel, weights: list, biases: list):
        self.kernel, self.weights, self.biases = kernel, weights, biases
        count = len(weights)
        self.in_features = weights[0].shape[1]
        self.out_features = sum(w.shape[0] for w in weights)
        self._weights = (ctypes.c_void_p * count)(*[w.data_ptr() for w in weights])
        self._biases = (ctypes.c_void_p * count)(*[None if b is None else b.data_ptr() for b in biases])
        ends, total = [], 0
        for w in weights:
            total += w.shape[0]
            ends.append(total)
        self._ends = (ctypes.c_int * count)(*ends)
        self._count = count

    def __call__(self, x):
        import torch

        rows = x.numel() // x.shape[-1]
        if not (1 <= rows <= self.kernel.max_rows) or x.dtype != self.kernel.dtype or x.shape[-1] != self.in_features:
            raise ValueError(f"rows kernel: {rows} rows of {tuple(x.shape)} {x.dtype} against "
                             f"({self.out_features}, {self.in_features})")
        x = x.contiguous()
        out = torch.empty(*x.shape[:-1], self.out_features, dtype=x.dtype)
        self.kernel._call(x.data_ptr(), self._weights, self._biases, self._ends, self._count, out.data_ptr(), rows,
                          self.in_features, torch.get_num_threads())
        return out


class StepOps:
    """The step operations of kernels/step_ops.c on contiguous CPU tensors of one dtype (bfloat16 or float32).
    The methods check their arguments; :meth:`raw` gives a dtype's unchecked C functions (pointers and sizes) for a
    caller that laid out its own tensors, as the lean forward's decode step does."""

    DTYPES = ("bfloat16", "float32")

    def __init__(self, library: ctypes.CDLL):
        pointer, integer = ctypes.c_void_p, ctypes.c_int
        self._raw, self._lora = {}, {}
        for name, suffix in zip(self.DTYPES, ("bf16", "f32")):
            norm = getattr(library, f"add_rms_norm_{suffix}")
            norm.argtypes = [pointer] * 3 + [ctypes.c_float, pointer, integer, integer]
            rope = getattr(library, f"rope_store_{suffix}")
            rope.argtypes = [pointer] * 6 + [integer] * 6
            attend = getattr(library, f"attend_{suffix}")
            attend.argtypes = [pointer] * 4 + [integer, pointer] + [integer] * 6 + [ctypes.c_float, pointer, integer]
            norm.restype = rope.restype = attend.restype = None
            self._raw[name] = (norm, rope, attend)
        # (input and output dtype, adapter tables' dtype): PEFT keeps a bfloat16 model's adapters in float32
        for key, function in {("bfloat16", "bfloat16"): "lora_delta_bf16", ("float32", "float32"): "lora_delta_f32",
                              ("bfloat16", "float32"): "lora_delta_bf16_f32"}.items():
            lora = getattr(library, function)
            lora.argtypes = [pointer] * 4 + [integer] * 6 + [pointer] * 2
            lora.restype = None
            self._lora[key] = lora
        library.lora_max_rank.restype = library.attend_max_chunks.restype = library.attend_max_groups.restype = integer
        self.max_rank = library.lora_max_rank()
        self.max_head_dim, self.max_groups = 16 * library.attend_max_chunks(), library.attend_max_groups()

    def raw(self, dtype):
        """(add_rms_norm, rope_store, attend) for ``dtype``, or None for another dtype."""
        return self._raw.get(_name(dtype))

    def takes_lora(self, dtype, table_dtype, rank: int) -> bool:
        return (_name(dtype), _name(table_dtype)) in self._lora and rank <= self.max_rank

    def _check(self, dtype, **tensors) -> None:
        for name, tensor in tensors.items():
            if tensor is None:
                continue
            if tensor.dtype != dtype or tensor.device.type != "cpu" or not tensor.is_contiguous():
                raise ValueError(f"step ops: {name} must be a contiguous {dtype} CPU tensor, not "
                                 f"{tuple(tensor.shape)} {tensor.dtype} on {tensor.device}")

    def add_rms_norm(self, hidden, delta, weight, eps: float, out) -> None:
        """``hidden += delta`` (skipped for None), then ``out = weight * rms_norm(hidden)``; rows of ``hidden``'s
        last dimension, rounded as ``weight * F.rms_norm(hidden.float(), eps).to(dtype)`` rounds."""
        dtype, width = hidden.dtype, hidden.shape[-1]
        self._check(dtype, hidden=hidden, delta=delta, weight=weight, out=out)
        if self.raw(dtype) is None or weight.shape != (width,) or out.shape != hidden.shape or (
                delta is not None and delta.shape != hidden.shape):
            raise ValueError(f"step ops: add_rms_norm of {tuple(hidden.shape)} {dtype} with weight "
                             f"{tuple(weight.shape)}, out {tuple(out.shape)}")
        self.raw(dtype)[0](hidden.data_ptr(), None if delta is None else delta.data_ptr(), weight.data_ptr(), eps,
                           out.data_ptr(), hidden.numel() // max(width, 1), width)

    def lora_parts(self, ranks: list[int], out_sizes: list[int]) -> tuple:
        """Block-diagonal tables for projections side by side (q, k, v): part i has ``ranks[i]`` ranks (0: no
        LoRA) and ``out_sizes[i]`` outputs; only those blocks are read."""
        rank_ends, out_ends, rank_at, out_at = [], [], 0, 0
        for rank, size in zip(ranks, out_sizes):
            rank_at, out_at = rank_at + rank, out_at + size
            rank_ends.append(rank_at)
            out_ends.append(out_at)
        count = len(ranks)
        return count, (ctypes.c_int * count)(*rank_ends), (ctypes.c_int * count)(*out_ends), rank_at, out_at

    def lora_delta(self, x, a, b_t, out, parts: tuple | None = None) -> None:
        """``out += (x @ aᵀ) @ b_t`` per row: x [rows, tokens, K], a [rows, R, K], b_t [rows, R, N], out
        [rows, tokens, N]; rounded as ``out + torch.bmm(torch.bmm(x, aᵀ), b_t)`` (x taken to the tables' dtype
        first, the sum rounded once to ``out``'s). ``parts``: :meth:`lora_parts` for a block-diagonal ``b_t``."""
        self._check(x.dtype, x=x, out=out)
        self._check(a.dtype, a=a, b_t=b_t)
        if (not self.takes_lora(x.dtype, a.dtype, a.shape[1] if a.dim() == 3 else 0) or x.dim() != 3
                or a.dim() != 3 or b_t.dim() != 3 or a.shape[0] != x.shape[0] or a.shape[2] != x.shape[2]
                or b_t.shape[:2] != a.shape[:2] or out.shape != (*x.shape[:2], b_t.shape[2])
                or (parts is not None and parts[3:] != (a.shape[1], b_t.shape[2]))):
            raise ValueError(f"step ops: a LoRA delta of x {tuple(x.shape)} {x.dtype} with A {tuple(a.shape)}, "
                             f"B {tuple(b_t.shape)} {a.dtype} into {tuple(out.shape)} (rank at most "
                             f"{self.max_rank}; tables of the input's dtype, or float32 for bfloat16; parts "
                             f"covering the ranks and outputs)")
        self.lora_delta_unchecked(x, a, b_t, out, parts or self.lora_parts([a.shape[1]], [b_t.shape[2]]))

    def lora_delta_unchecked(self, x, a, b_t, out, parts: tuple) -> None:
        self._lora[_name(x.dtype), _name(a.dtype)](x.data_ptr(), a.data_ptr(), b_t.data_ptr(), out.data_ptr(),
                                                   x.shape[0], x.shape[1], x.shape[2], a.shape[1], b_t.shape[2],
                                                   *parts[:3])

    def rope_store(self, qkv, cos, sin, q_out, k_cache, v_cache, column: int) -> None:
        """One token per row: ``qkv`` [rows, (heads + 2·kv_heads)·D] → q with rotary embedding into ``q_out``
        [rows, heads, D], k with it and v into ``column`` of the caches [rows, kv_heads, capacity, D]; ``cos``,
        ``sin`` [rows, D], as transformers' ``apply_rotary_pos_emb`` computes it."""
        dtype = qkv.dtype
        self._check(dtype, qkv=qkv, cos=cos, sin=sin, q_out=q_out, k_cache=k_cache, v_cache=v_cache)
        rows, heads, width = q_out.shape[0], q_out.shape[1], q_out.shape[-1]
        kv_heads, capacity = k_cache.shape[1], k_cache.shape[2]
        if (self.raw(dtype) is None or q_out.dim() != 3 or k_cache.dim() != 4 or v_cache.shape != k_cache.shape
                or k_cache.shape[0] != rows or k_cache.shape[3] != width or width % 2
                or qkv.numel() != rows * (heads + 2 * kv_heads) * width
                or cos.numel() != rows * width or sin.numel() != rows * width or not 0 <= column < capacity):
            raise ValueError(f"step ops: rotary embedding of qkv {tuple(qkv.shape)} into q {tuple(q_out.shape)}, "
                             f"caches {tuple(k_cache.shape)} at column {column}")
        self.raw(dtype)[1](qkv.data_ptr(), cos.data_ptr(), sin.data_ptr(), q_out.data_ptr(), k_cache.data_ptr(),
                           v_cache.data_ptr(), rows, heads, kv_heads, width, capacity, column)

    def takes_attention(self, heads: int, kv_heads: int, head_dim: int) -> bool:
        return (head_dim % 16 == 0 and head_dim <= self.max_head_dim and heads % kv_heads == 0
                and heads // kv_heads <= self.max_groups)

    def attend(self, q, keys, values, valid, scale: float):
        """One new token per row over its cached columns: ``q`` [rows, heads, D]; ``keys``, ``values``: the first
        ``length`` columns of caches [rows, kv_heads, capacity, D] (views, as the cache layer gives them);
        ``valid``: bool [rows, length] with contiguous columns (padding False), or None. → [rows, heads, D], as
        ``F.scaled_dot_product_attention`` with that mask gives it (grouped heads: each kv head serves
        heads / kv_heads query heads)."""
        import torch

        dtype = q.dtype
        self._check(dtype, q=q)
        rows, heads, width = q.shape if q.dim() == 3 else (0, 1, 0)
        kv_heads = keys.shape[1] if keys.dim() == 4 else 1
        good = (self.raw(dtype) is not None and q.dim() == 3 and keys.dim() == 4 and keys.dtype == values.dtype == dtype
                and keys.shape == values.shape and keys.stride() == values.stride() and keys.shape[0] == rows
                and keys.shape[3] == width and self.takes_attention(heads, kv_heads, width)
                and keys.stride(3) == 1 and keys.stride(2) == width and keys.stride(1) % width == 0
                and keys.stride(0) == kv_heads * keys.stride(1))
        if good and valid is not None:
            good = valid.dtype == torch.bool and valid.shape == (rows, keys.shape[2]) and valid.stride(1) == 1
        if not good:
            raise ValueError(f"step ops: attention of q {tuple(q.shape)} {dtype} over keys {tuple(keys.shape)} "
                             f"{keys.dtype}, mask {None if valid is None else tuple(valid.shape)} (head size a "
                             f"multiple of 16 up to {self.max_head_dim}, kv heads dividing the heads)")
        out = torch.empty_like(q)
        self.attend_unchecked(q, keys.data_ptr(), values.data_ptr(), valid, out, kv_heads, keys.stride(1) // width,
                              keys.shape[2], scale)
        return out

    def attend_unchecked(self, q, keys_at: int, values_at: int, valid, out, kv_heads: int, capacity: int,
                         length: int, scale: float) -> None:
        import torch

        rows, heads, width = q.shape
        threads = torch.get_num_threads()
        scratch = torch.empty(threads * heads // kv_heads * length, dtype=torch.float32)
        self.raw(q.dtype)[2](q.data_ptr(), keys_at, values_at, None if valid is None else valid.data_ptr(),
                             0 if valid is None else valid.stride(0), out.data_ptr(), rows, heads, kv_heads, width,
                             capacity, length, scale, scratch.data_ptr(), threads)


def rows_kernel(dtype=None) -> RowsKernel | None:
    """The kernel for ``dtype`` (torch.bfloat16, the default, or torch.float32), built and loaded once per process;
    None where it cannot run here (:func:`why_not` says why)."""
    import torch  # first: the kernel's libgomp.so.1 must resolve to torch's, loaded by then

    dtype = torch.bfloat16 if dtype is None else dtype
    name = _name(dtype)
    if name not in SOURCES:
        return None
    return _load_once(name, lambda: RowsKernel(ctypes.CDLL(str(_library(SOURCES[name]))), dtype),
                      f"{name} rows kernel")


def why_not(dtype=None) -> str | None:
    rows_kernel(dtype)
    return _built.get(_name(dtype) if dtype is not None else "bfloat16", (None, None))[1]


def step_ops() -> "StepOps | None":
    """The step operations (kernels/step_ops.c), built and loaded once per process; None where they cannot run
    here (:func:`step_ops_why_not` says why)."""
    import torch  # noqa: F401 — first, as for the rows kernels

    return _load_once("step_ops", lambda: StepOps(ctypes.CDLL(str(_library(STEP_OPS_SOURCE, STEP_OPS_FLAGS)))),
                      "step operations")


def step_ops_why_not() -> str | None:
    step_ops()
    return _built["step_ops"][1]


def _load_once(key: str, load, what: str):
    """``load()`` once per process under ``key`` in ``_built``; None (the reason kept, logged once) where the build or
    the load fails."""
    with _lock:
        if key not in _built:
            try:
                _built[key] = load(), None
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                _built[key] = None, str(exc)
                log.info("%s not used: %s", what, exc)
        return _built[key][0]


def _name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def _library(source: Path, flags: list[str] = FLAGS) -> Path:
    if os.environ.get("WORKBENCH_CPU_KERNEL", "1") == "0":
        raise RuntimeError("switched off (WORKBENCH_CPU_KERNEL=0)")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise RuntimeError(f"built and tested for x86-64 CPUs only (this is {platform.machine()})")
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not compiler:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    key = hashlib.sha256(source.read_bytes() + " ".join([compiler, *flags]).encode() + _cpu_identity()).hexdigest()
    target = home() / "kernels" / f"{source.stem}-{key[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        done = subprocess.run([compiler, *flags, str(source), "-o", str(built)], capture_output=True, text=True,
                              timeout=300)
        if done.returncode != 0:
            if "no AVX512-BF16" in done.stderr:
                raise RuntimeError("this CPU has no AVX512-BF16")
            raise RuntimeError(f"{compiler} could not build {source.name}: {done.stderr.strip()[-500:]}")
        os.replace(built, target)  # atomic: a process starting at the same moment sees all of it or nothing
    return target


def _cpu_identity() -> bytes:
    """-march=native compiles for this CPU: a home shared between machines must not load another CPU's build."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor().encode()
    lines = [line for line in info.splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join(dict.fromkeys(lines)).encode()
