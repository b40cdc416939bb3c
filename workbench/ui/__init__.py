"""The Gradio face: one module per tab, no business logic (the core does the work)."""
