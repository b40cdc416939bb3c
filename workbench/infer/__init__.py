"""Inference: the loaded-model session, chat engine, batched generation, OpenAI-compatible API."""
