"""Workbench: fine-tune, chat with, evaluate and export language models on a workstation."""

import logging

__version__ = "0.1.0"

# bitsandbytes warns on every import on AVX512-BF16 CPUs that an optional hub kernel ("kernels" package) is
# missing; its own CPU path works without it, and the warning reads like a failure at the top of every job log.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
