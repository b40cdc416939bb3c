"""Following a run from a tab's timer: the one poller behind the Train, Evaluate and Export tabs.

A tab keeps a *watch* (a ``gr.State`` dict: the run's ``name``, the byte ``offset`` read so far in its
progress.jsonl, the ``entries`` read, the ``state`` seen at the last tick, and ``pinned`` when the user picked
the run) plus keys of its own. Each tick, :meth:`RunWatcher.tick` finds the run to show — the watched one, or
after a page reload the kind's running job — and reads what it wrote since the last tick into a
:class:`Snapshot`; the tab only renders it. Everything is read back from the run directory, so a reload or a
restart of the app re-attaches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.config.base import WorkbenchError
from workbench.jobs import runs
from workbench.jobs import store as jobs
from workbench.rundir import STATUS_FILE, read_phase
from workbench.ui.context import error_text


def new_watch(name: str | None, **extra: Any) -> dict[str, Any]:
    """The watch of run ``name`` (None: nothing yet) before its first tick."""
    return {"name": name, "offset": 0, "entries": [], "state": None, **extra}


def run_status(path: Path) -> dict[str, Any]:
    """status.json for a job; for a run trained on the command line, what its files say."""
    if (path / STATUS_FILE).is_file():
        return jobs.Job(path).status()
    summary = runs.summarize(path)
    return {"name": path.name, "state": summary.state if summary else "missing",
            "started": summary.started if summary else None, "ended": summary.ended if summary else None}


@dataclass
class Snapshot:
    """One tick of a run: its status, its progress so far and its log tail."""

    watch: dict[str, Any]           # the watch to keep for the next tick (offset, entries and state moved on)
    path: Path
    status: dict[str, Any]          # see jobs.Job.status
    entries: list[dict[str, Any]]   # every progress.jsonl entry read so far
    progressed: bool                # new entries came, or the file was rewritten (a resumed run)
    log_tail: str
    changed: bool                   # the state differs from the last tick's (so also on the first tick)
    phase: dict[str, Any] | None = None  # phase.json: what the run is doing now (see rundir.write_phase)

    @property
    def state(self) -> str | None:
        return self.status.get("state")

    @property
    def ended(self) -> bool:
        """The run reached a final state since the last tick."""
        return self.changed and self.state in jobs.FINAL_STATES


@dataclass(frozen=True)
class RunWatcher:
    """How a tab follows the runs of one job kind."""

    kind: str
    log_lines: int = 20
    reattach: bool = True   # with nothing watched, take the kind's running (else next queued) job: a page reload
    any_run: bool = False   # runs without a job too (trained on the command line); a watched run that is gone is
                            # replaced like an empty watch, and with no job under way the newest run is shown

    def tick(self, watch: dict[str, Any] | None) -> Snapshot | None:
        """The run to show and what it wrote since the last tick; None when there is none. Raises
        WorkbenchError when the watched job is gone (unless ``any_run``)."""
        watch = dict(watch or new_watch(None))
        path = self._watched(watch)
        if path is None:
            path = self._fallback()
            if path is None:
                return None
            watch = new_watch(path.name)
        return read_run(watch, path, self.log_lines)

    def _watched(self, watch: dict[str, Any]) -> Path | None:
        name = watch.get("name")
        if not name:
            return None
        if self.any_run:
            path = runs.run_path_for(name)
            if path is None or not path.is_dir():
                return None
        else:
            path = jobs.get_job(name).path
        if not watch.get("pinned") and watch.get("state") in jobs.FINAL_STATES:
            active = jobs.active_job(self.kind)  # the run shown has ended and another started: follow it
            if active is not None and active.name != name:
                return None
        return path

    def _fallback(self) -> Path | None:
        if not self.reattach:
            return None
        job = jobs.active_job(self.kind)
        if job is not None:
            return job.path
        if self.any_run:
            latest = runs.list_runs(kind=self.kind)
            return Path(latest[0].path) if latest else None
        return None


def read_run(watch: dict[str, Any], path: Path, log_lines: int) -> Snapshot:
    """Status, the progress lines after the watch's offset, and the last ``log_lines`` lines of the log."""
    status = run_status(path)
    job = jobs.Job(path)
    chunk = job.read_progress(watch.get("offset", 0))
    entries = ([] if chunk.reset else list(watch.get("entries", []))) + chunk.entries
    state = status.get("state")
    changed = state != watch.get("state")
    watch = {**watch, "offset": chunk.offset, "entries": entries, "state": state}
    phase = read_phase(path) if state == "running" else None
    return Snapshot(watch, path, status, entries, bool(chunk.entries or chunk.reset), job.tail_log(log_lines),
                    changed, phase)


def abort_watched(watch: dict | None, suffix: str = "") -> str:
    """Abort the watched job (Evaluate's and Export's Abort): the state it ended in, or why it could not."""
    if not watch:
        return "Nothing is running."
    try:
        st = jobs.get_job(watch["name"]).abort()
    except WorkbenchError as exc:
        return error_text(exc)
    return f"⏹ {str(st.get('state', 'aborted')).capitalize()}: {watch['name']}{suffix}"
