"""Workbench: fine-tune, chat with, evaluate and export language models on a workstation."""

import logging
import warnings

__version__ = "0.1.0"

# bitsandbytes warns on every import on AVX512-BF16 CPUs that an optional hub kernel ("kernels" package) is
# missing; its own CPU path works without it, and the warning reads like a failure at the top of every job log.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# With the "kernels" package present (transformers >= 5.25 requires it), that same optional lookup logs, offline,
# that it skipped the hub publisher check — on every import, in every job log.
logging.getLogger("kernels._internals.hf_hub").setLevel(logging.ERROR)

# PEFT reads transformers' deprecated ``is_gradient_checkpointing`` whenever an adapter is attached; the
# FutureWarning is about PEFT's code, not the user's, and opened every chat, eval and export log.
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
