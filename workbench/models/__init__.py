"""Model registry, the bundled default model, and the one loader used everywhere."""
