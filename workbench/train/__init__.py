"""The training engine: ``python -m workbench train`` (stages pt/sft/rm/dpo; LoRA, QLoRA, freeze, full).

``run.py`` is the one entry (``run_training``); ``cli.py`` parses YAML + flags and optionally wraps
the run in ``accelerate launch`` (``launch.py``). The run writes its progress and outputs into
``output_dir`` (see ``outputs.py`` and ``callbacks.py``), which is all the UI reads.
"""
