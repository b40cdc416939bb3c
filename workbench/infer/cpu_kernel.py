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
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]
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


def rows_kernel(dtype=None) -> RowsKernel | None:
    """The kernel for ``dtype`` (torch.bfloat16, the default, or torch.float32), built and loaded once per process;
    None where it cannot run here (:func:`why_not` says why)."""
    import torch  # first: the kernel's libgomp.so.1 must resolve to torch's, loaded by then

    dtype = torch.bfloat16 if dtype is None else dtype
    name = _name(dtype)
    if name not in SOURCES:
        return None
    with _lock:
        if name not in _built:
            try:
                _built[name] = RowsKernel(ctypes.CDLL(str(_library(SOURCES[name]))), dtype), None
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                _built[name] = None, str(exc)
                log.info("%s rows kernel not used: %s", name, exc)
        return _built[name][0]


def why_not(dtype=None) -> str | None:
    rows_kernel(dtype)
    return _built.get(_name(dtype) if dtype is not None else "bfloat16", (None, None))[1]


def _name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def _library(source: Path) -> Path:
    if os.environ.get("WORKBENCH_CPU_KERNEL", "1") == "0":
        raise RuntimeError("switched off (WORKBENCH_CPU_KERNEL=0)")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise RuntimeError(f"built and tested for x86-64 CPUs only (this is {platform.machine()})")
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not compiler:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    key = hashlib.sha256(source.read_bytes() + " ".join([compiler, *FLAGS]).encode() + _cpu_identity()).hexdigest()
    target = home() / "kernels" / f"{source.stem}-{key[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        done = subprocess.run([compiler, *FLAGS, str(source), "-o", str(built)], capture_output=True, text=True,
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
