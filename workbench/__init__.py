"""Workbench: fine-tune, chat with, evaluate and export language models on a workstation."""

__version__ = "0.1.0"
