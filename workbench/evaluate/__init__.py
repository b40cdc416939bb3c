"""Evaluation: metrics (pure functions), tasks, the batched models × tasks runner, result tables."""
