"""Long work as Jobs: :mod:`~workbench.jobs.store` (a subprocess in its own process group with a run directory;
start, queue, abort, delete), :mod:`~workbench.jobs.supervisor` (the small process that waits for each child and
writes its end status), :mod:`~workbench.jobs.runs` (the runs table: summaries of every run directory, adapters
for the pickers, config comparison) and :mod:`~workbench.jobs.cli` (``python -m workbench jobs``)."""
