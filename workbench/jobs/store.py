"""Long work as a Job: a subprocess started from an argv list (never a shell) plus a run directory.

A run directory ``runs_dir()/<name>`` holds:

* ``job.json``     what to run (kind, argv, env additions, cwd, grace period, whether it queues); never changes
* ``config.yaml``  the options that were asked for (when the caller gives them)
* ``command.txt``  exactly what runs, as one shell-quoted line
* ``status.json``  state (queued / running / finished / failed / aborted), pids, times, exit code, error
* ``log.txt``      the child's stdout and stderr, written by the OS (a file, not a pipe: nothing to drain)
* ``progress.jsonl`` and the outputs, written by the child itself

Every job runs under a small supervisor process (:mod:`workbench.jobs.supervisor`) in its own
session. The supervisor waits for the child, writes the end status and starts the next queued job,
so a job finishes, records its exit code and the queue moves on even when the UI that started it
has gone. The UI only reads these files; after a reload or a restart it finds running jobs again.
A job whose supervisor died without writing an end status (killed, machine restarted) is shown as
failed, with the last lines of its log.

Jobs of an *exclusive* kind (training and evaluation: they use the device) run one at a time; the
others wait as ``queued`` and start in order, or are cancelled from the queue.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from workbench.config.base import WorkbenchError, dump_yaml
from workbench.paths import PROJECT_ROOT, run_path, runs_dir
from workbench.rundir import (
    COMMAND_FILE,
    CONFIG_FILE,
    LOG_FILE,
    PROGRESS_FILE,
    SPEC_FILE,
    STATUS_FILE,
    last_lines,
    read_json,
)

STATES = ("queued", "running", "finished", "failed", "aborted")
FINAL_STATES = frozenset({"finished", "failed", "aborted"})
# Kinds that need the device to themselves; others start at once.
EXCLUSIVE_KINDS = frozenset({"train", "eval"})
DEFAULT_GRACE = 10.0  # seconds between SIGTERM and SIGKILL on abort

_STATUS_LOCK = ".status.lock"
_QUEUE_LOCK = ".queue.lock"
# status.json is written padded to this size, so that on a full disk the end status can still be
# written over the blocks the file already owns (see _write_status).
STATUS_RESERVE = 4096
MAX_ERROR_CHARS = 1500

_ERROR_LINE = re.compile(r"^(error: |\[workbench\] error|[A-Za-z_.]*(Error|Exception|Interrupt)\b)")


# ---- small file helpers --------------------------------------------------------------------------

@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (flock) held for the block; works across processes."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _os_error(exc: OSError, what: str, path: Path) -> WorkbenchError:
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        reason += " (the disk is full: free some space and start again)"
    return WorkbenchError(f"cannot {what} {path}: {reason}")


def _encode_status(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def _write_status(path: Path, data: dict[str, Any]) -> None:
    """Atomic replace, padded to STATUS_RESERVE bytes; on a full disk, overwrite the old file in place.

    JSON allows trailing whitespace, so the padding is invisible to readers. In-place overwriting
    needs no new blocks, which is what lets a run on a full disk still say why it failed.
    """
    body = _encode_status(data)
    padded = body + b" " * max(0, STATUS_RESERVE - len(body))
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(padded)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not path.is_file():
            raise
    size = path.stat().st_size
    if len(body) > size:  # keep the essentials; the error text is what gets shortened
        data = dict(data)
        data["error"] = (data.get("error") or "")[: max(0, size - (len(body) - len(data.get("error") or "")) - 8)]
        body = _encode_status(data)
    with open(path, "r+b") as f:
        f.write(body + b" " * max(0, size - len(body)))
        f.flush()
        os.fsync(f.fileno())


def error_from_log(lines: list[str]) -> str | None:
    """The line that best says why a process failed: our CLI's ``error: ...`` or the exception line."""
    for line in reversed(lines):
        text = line.strip()
        if _ERROR_LINE.match(text):
            return text
    return None


# ---- process identity ------------------------------------------------------------------------------

def _create_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _alive(pid: int | None, create_time: float | None) -> bool:
    """Is ``pid`` still the process we started (not a zombie, not a recycled pid)?"""
    if not pid:
        return False
    import psutil

    try:
        proc = psutil.Process(pid)
        if create_time is not None and abs(proc.create_time() - create_time) > 0.05:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def group_alive(pgid: int | None) -> bool:
    """Does any live (non-zombie) process remain in process group ``pgid``?"""
    if not pgid:
        return False
    import psutil

    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                return True
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            continue
    return False


def kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# Supervisors started by this process are reaped by a waiting thread, so none is left as a zombie.
_reapers: list[threading.Thread] = []


def _reap_in_background(proc: subprocess.Popen) -> None:
    thread = threading.Thread(target=proc.wait, name=f"reap-job-{proc.pid}", daemon=True)
    thread.start()
    _reapers.append(thread)
    _reapers[:] = [t for t in _reapers if t.is_alive()]


# ---- the Job -----------------------------------------------------------------------------------------

class Progress(NamedTuple):
    entries: list[dict[str, Any]]
    offset: int     # pass back as since_offset to read only what is new
    reset: bool     # the file was rewritten (a resumed run drops later steps): discard what you had


class Job:
    """A handle on a run directory; every method reads the files afresh (no state is cached)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.name = self.path.name
        self.root = self.path.parent

    def __repr__(self) -> str:
        return f"Job({self.name!r})"

    # -- the files --
    @property
    def spec(self) -> dict[str, Any]:
        spec = read_json(self.path / SPEC_FILE, retries=4)
        if spec is None:
            raise WorkbenchError(f"{self.path / SPEC_FILE}: missing or not valid JSON; this is not a job directory")
        return spec

    @property
    def kind(self) -> str:
        return str(self.spec.get("kind", "job"))

    @property
    def log_path(self) -> Path:
        return self.path / LOG_FILE

    @property
    def progress_path(self) -> Path:
        return self.path / PROGRESS_FILE

    def command(self) -> str:
        try:
            return (self.path / COMMAND_FILE).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return shlex.join(self.spec.get("argv", []))

    def config(self) -> dict[str, Any]:
        """config.yaml as a mapping ({} when the job has none)."""
        import yaml

        try:
            data = yaml.safe_load((self.path / CONFIG_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except yaml.YAMLError as exc:
            raise WorkbenchError(f"{self.path / CONFIG_FILE}: not valid YAML ({exc})") from None
        return data if isinstance(data, dict) else {}

    def raw_status(self) -> dict[str, Any]:
        """status.json as written, without checking whether its processes are alive."""
        data = read_json(self.path / STATUS_FILE, retries=4)
        if data is None:
            return {"name": self.name, "state": "failed", "error": f"{self.path / STATUS_FILE} is missing or damaged"}
        return data

    def status(self) -> dict[str, Any]:
        """The job's status (status.json), checked against the processes.

        Keys: name, kind, state, exclusive, created, started, ended (epoch seconds or None), pid and
        pgid (the child), supervisor_pid, exit_code, error, and for queued jobs queue_position (1 = next).
        A running job whose supervisor is gone is settled here (failed, or aborted if an abort was asked).
        """
        st = self.raw_status()
        if st.get("state") == "running" and not _alive(st.get("supervisor_pid"), st.get("supervisor_ctime")):
            st = self._settle_dead()
        if st.get("state") == "queued":
            st["queue_position"] = queue_position(self.name, self.root)
        return st

    @property
    def state(self) -> str:
        return str(self.status().get("state"))

    def is_active(self) -> bool:
        return self.state in ("queued", "running")

    def _update(self, **fields: Any) -> dict[str, Any]:
        with _locked(self.path / _STATUS_LOCK):
            st = self.raw_status()
            st.update(fields)
            _write_status(self.path / STATUS_FILE, st)
            return st

    def _settle_dead(self, advance: bool = True) -> dict[str, Any]:
        """The supervisor is gone while status.json still says running: decide what happened."""
        with _locked(self.path / _STATUS_LOCK):
            st = self.raw_status()
            if st.get("state") != "running" or _alive(st.get("supervisor_pid"), st.get("supervisor_ctime")):
                return st
            if _alive(st.get("pid"), st.get("pid_ctime")):
                return st  # the child outlived its supervisor and still runs; abort() can still stop it
            tail = last_lines(self.log_path, 20)
            if st.get("abort_requested"):
                st.update(state="aborted", error=st.get("error") or "aborted")
            else:
                reason = error_from_log(tail)
                st.update(state="failed", error=(
                    "the job's processes ended without recording an end status (killed, or the machine "
                    "restarted)" + (f"; last error in log.txt: {reason}" if reason else "")
                    + ("\n--- last lines of log.txt ---\n" + "\n".join(tail[-8:]) if tail else ""))[:MAX_ERROR_CHARS])
            st["ended"] = st.get("ended") or time.time()
            _write_status(self.path / STATUS_FILE, st)
        if advance:
            advance_queue(self.root)
        return st

    # -- reading output --
    def tail_log(self, n: int = 40) -> str:
        return "\n".join(last_lines(self.log_path, n))

    def read_progress(self, since_offset: int = 0) -> Progress:
        """Complete lines of progress.jsonl after byte ``since_offset`` (a half-written last line waits)."""
        try:
            with open(self.progress_path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                reset = size < since_offset
                start = 0 if reset else since_offset
                f.seek(start)
                data = f.read()
        except FileNotFoundError:
            return Progress([], 0, since_offset > 0)
        end = data.rfind(b"\n")
        if end < 0:
            return Progress([], start, reset)
        entries = []
        for line in data[: end + 1].splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    entries.append(entry)
        return Progress(entries, start + end + 1, reset)

    # -- control --
    def abort(self, grace: float | None = None, wait: bool = True, timeout: float | None = None) -> dict[str, Any]:
        """Cancel a queued job, or stop a running one: SIGTERM to its process group, SIGKILL after
        ``grace`` seconds. With ``wait``, return once the end status is written."""
        grace = float(self.spec.get("grace", DEFAULT_GRACE) if grace is None else grace)
        with _locked(self.root / _QUEUE_LOCK):
            st = self.raw_status()
            if st.get("state") == "queued":
                return self._update(state="aborted", ended=time.time(), error="cancelled before it started")
        st = self.status()
        if st.get("state") in FINAL_STATES:
            return st
        st = self._update(abort_requested=time.time(), abort_grace=grace)
        if _alive(st.get("supervisor_pid"), st.get("supervisor_ctime")):
            with contextlib.suppress(ProcessLookupError):
                os.kill(st["supervisor_pid"], signal.SIGTERM)  # it stops the child and writes "aborted"
        else:
            self._stop_orphan(st, grace)
        if not wait:
            return self.status()
        deadline = time.time() + (timeout if timeout is not None else grace + 15)
        while time.time() < deadline:
            st = self.status()
            if st.get("state") in FINAL_STATES:
                return st
            time.sleep(0.1)
        # The supervisor did not finish in time: stop everything ourselves.
        sup = st.get("supervisor_pid")
        if _alive(sup, st.get("supervisor_ctime")):
            with contextlib.suppress(ProcessLookupError):
                os.kill(sup, signal.SIGKILL)
        self._stop_orphan(st, 0)
        return self.status()

    def _stop_orphan(self, st: dict[str, Any], grace: float) -> None:
        """Stop a child whose supervisor is gone, and record the abort."""
        pgid = st.get("pgid")
        if pgid and _alive(st.get("pid"), st.get("pid_ctime")):
            kill_group(pgid, signal.SIGTERM)
            deadline = time.time() + grace
            while time.time() < deadline and group_alive(pgid):
                time.sleep(0.1)
        if pgid:
            kill_group(pgid, signal.SIGKILL)
        with _locked(self.path / _STATUS_LOCK):
            cur = self.raw_status()
            if cur.get("state") not in FINAL_STATES:
                cur.update(state="aborted", ended=time.time(), error="aborted")
                _write_status(self.path / STATUS_FILE, cur)
        advance_queue(self.root)

    def wait(self, timeout: float | None = None, poll: float = 0.2) -> dict[str, Any]:
        """Block until the job reaches an end state (or ``timeout`` seconds pass); returns the status."""
        deadline = None if timeout is None else time.time() + timeout
        while True:
            st = self.status()
            if st.get("state") in FINAL_STATES or (deadline is not None and time.time() >= deadline):
                return st
            time.sleep(poll)

    def delete(self, force: bool = False) -> None:
        """Remove the run directory of a job that has ended.

        Only a job's run folder (job.json and status.json, as :func:`start_job` writes them) is
        deleted. One that holds an adapter, a model or checkpoints needs ``force`` (``jobs delete
        --force``, or the UI after its confirmation).
        """
        if not is_job_dir(self.path):
            raise WorkbenchError(f"{self.path} is not a job's run folder (it has no {SPEC_FILE} and {STATUS_FILE}: "
                                 "it was not made by `jobs`); not deleting it")
        state = self.state
        if state not in FINAL_STATES:
            raise WorkbenchError(f"run {self.name!r} is {state}; abort it before deleting it")
        held = weight_files(self.path)
        if held and not force:
            shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
            raise WorkbenchError(f"{self.path} holds an adapter or model ({shown}); to delete it anyway, "
                                 f"run `python -m workbench jobs delete --force {self.name}`")
        try:
            shutil.rmtree(self.path)
        except OSError as exc:
            raise _os_error(exc, "delete", self.path) from None


# ---- starting, listing, the queue -----------------------------------------------------------------

def _root(root: Path | str | None) -> Path:
    return Path(root).expanduser().resolve() if root is not None else runs_dir().expanduser().resolve()


def start_job(
    kind: str,
    name: str,
    argv: list[str],
    config: dict[str, Any] | None = None,
    *,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    exclusive: bool | None = None,
    grace: float = DEFAULT_GRACE,
    reuse: bool = False,
    root: Path | str | None = None,
) -> Job:
    """Create run directory ``name`` and run ``argv`` in it as a job (or queue it).

    ``config`` is written to config.yaml before the job starts (so argv may point at it).
    ``exclusive`` (default: kind in EXCLUSIVE_KINDS) queues the job behind other exclusive jobs.
    ``reuse`` allows a run directory whose previous job has ended (resuming a run); its log grows on.
    Without it an existing run directory is refused, and so is any non-empty folder that ``jobs`` did
    not make (a command-line ``train`` run, a copied folder): its config.yaml is never written over.
    ``env`` adds variables to this process's environment; ``cwd`` defaults to the current directory.
    """
    if not isinstance(argv, (list, tuple)) or not argv or not all(isinstance(a, (str, os.PathLike)) for a in argv):
        raise WorkbenchError("a job's command must be a non-empty list of strings (no shell is used)")
    argv = [os.fspath(a) for a in argv]
    if not kind or not re.match(r"^[a-z][a-z0-9_-]*$", kind):
        raise WorkbenchError(f"job kind {kind!r} is not allowed: use lower-case letters, digits, '-' and '_'")
    base = _root(root)
    path = run_path(name, base)
    exclusive = kind in EXCLUSIVE_KINDS if exclusive is None else bool(exclusive)
    created_dir = _claim_run_dir(base, path, name, reuse)
    now = time.time()
    spec = {
        "kind": kind, "name": name, "argv": argv, "env": dict(env or {}),
        "cwd": str(Path(cwd).expanduser().resolve()) if cwd else os.getcwd(),
        "exclusive": exclusive, "grace": float(grace), "created": now,
    }
    status = {
        "name": name, "kind": kind, "state": "queued", "exclusive": exclusive, "created": now,
        # ns-resolution tie-break keeps the queue in start order
        "queued_at": time.time_ns(), "started": None, "ended": None, "pid": None, "pgid": None,
        "supervisor_pid": None, "exit_code": None, "error": None,
    }
    try:
        _write_job_files(path, config, argv, spec, status)
    except OSError as exc:
        if created_dir:
            shutil.rmtree(path, ignore_errors=True)
        raise _os_error(exc, "write the run files in", path) from None
    job = Job(path)
    if exclusive:
        advance_queue(base)
    else:
        _launch(job)
    return job


def _claim_run_dir(base: Path, path: Path, name: str, reuse: bool) -> bool:
    """Make the run directory, or accept an existing one that ``reuse`` allows; returns whether it was made."""
    try:
        base.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.mkdir()
            return True
        if not path.is_dir():
            raise WorkbenchError(f"{path} exists and is not a directory")
        if (path / STATUS_FILE).exists():
            state = Job(path).status().get("state")
            if not reuse:
                raise WorkbenchError(f"run {name!r} already exists in {base} ({state}); choose another name")
            if state not in FINAL_STATES:
                raise WorkbenchError(f"run {name!r} is still {state}; wait for it or abort it first")
        elif not reuse and any(path.iterdir()):
            # Not made by `jobs` (a `train` run from the command line, a copied folder): never write
            # over its config.yaml or make it deletable as a job.
            raise WorkbenchError(f"{path} already exists and was not made by `jobs` (no {STATUS_FILE}); "
                                 "choose another name")
        return False
    except OSError as exc:
        raise _os_error(exc, "create the run directory", path) from None


def _write_job_files(path: Path, config: dict[str, Any] | None, argv: list[str], spec: dict[str, Any],
                     status: dict[str, Any]) -> None:
    """config.yaml, command.txt, job.json, an empty log and the queued status (written last: it marks a job)."""
    if config is not None:
        (path / CONFIG_FILE).write_text(dump_yaml(config), encoding="utf-8")
    (path / COMMAND_FILE).write_text(shlex.join(argv) + "\n", encoding="utf-8")
    (path / SPEC_FILE).write_text(json.dumps(spec, indent=1) + "\n", encoding="utf-8")
    with open(path / LOG_FILE, "ab"):
        pass
    (path / _STATUS_LOCK).touch()
    with _locked(path / _STATUS_LOCK):
        _write_status(path / STATUS_FILE, status)


def _launch(job: Job) -> None:
    """Start the supervisor of ``job`` (status goes queued → running). Caller holds the queue lock
    for exclusive jobs."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # The supervisor and `python -m workbench` must import this package wherever the job's cwd is.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    log = open(job.log_path, "ab")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workbench.jobs.supervisor", str(job.path)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=str(PROJECT_ROOT), env=env,
            start_new_session=True,  # survives the UI, its Ctrl-C and its terminal
        )
    except OSError as exc:
        job._update(state="failed", ended=time.time(), error=f"cannot start the job supervisor: {exc}")
        return
    finally:
        log.close()
    ctime = _create_time(proc.pid)
    with _locked(job.path / _STATUS_LOCK):
        st = job.raw_status()
        st.update(supervisor_pid=proc.pid, supervisor_ctime=ctime)
        if st.get("state") == "queued":  # a supervisor that already ended has written its own state
            st["state"] = "running"
        _write_status(job.path / STATUS_FILE, st)
    _reap_in_background(proc)


def _job_dirs(root: Path) -> list[Path]:
    try:
        return [p for p in root.iterdir() if p.is_dir() and (p / STATUS_FILE).is_file()]
    except (FileNotFoundError, NotADirectoryError):
        return []


def advance_queue(root: Path | str | None = None) -> Job | None:
    """Start the oldest queued exclusive job if no exclusive job is running; returns it (or None).

    Called after every start, end, abort and cancel, by the UI and by supervisors alike, so the
    queue moves without a UI. A file lock makes concurrent callers agree.
    """
    base = _root(root)
    if not base.is_dir():
        return None
    with _locked(base / _QUEUE_LOCK):
        queued: list[tuple[int, str, Job]] = []
        for path in _job_dirs(base):
            job = Job(path)
            st = job.raw_status()
            if not st.get("exclusive"):
                continue
            if st.get("state") == "running":
                if _alive(st.get("supervisor_pid"), st.get("supervisor_ctime")):
                    return None
                if job._settle_dead(advance=False).get("state") == "running":
                    return None  # its child outlived the supervisor and still holds the device
            elif st.get("state") == "queued":
                queued.append((int(st.get("queued_at") or 0), job.name, job))
        if not queued:
            return None
        job = min(queued)[2]
        _launch(job)
        return job


def queue_position(name: str, root: Path | str | None = None) -> int | None:
    base = _root(root)
    order = sorted((int(st.get("queued_at") or 0), p.name) for p in _job_dirs(base)
                   if (st := Job(p).raw_status()).get("state") == "queued" and st.get("exclusive"))
    names = [n for _, n in order]
    return names.index(name) + 1 if name in names else None


def list_jobs(root: Path | str | None = None, kind: str | None = None) -> list[Job]:
    """Jobs in the runs directory, newest first (optionally only one kind)."""
    jobs = []
    for path in _job_dirs(_root(root)):
        job = Job(path)
        st = job.raw_status()
        if kind is None or st.get("kind") == kind:
            jobs.append((float(st.get("created") or 0), job))
    return [job for _, job in sorted(jobs, key=lambda t: (t[0], t[1].name), reverse=True)]


def get_job(name: str, root: Path | str | None = None) -> Job:
    path = run_path(name, _root(root))
    if not (path / STATUS_FILE).is_file():
        if path.exists():
            raise WorkbenchError(f"no job named {name!r} in {path.parent}: {path} is not a job's run folder "
                                 f"(no {STATUS_FILE}; it was not made by `jobs`)")
        raise WorkbenchError(f"no job named {name!r} in {path.parent}")
    return Job(path)


def is_job_dir(path: Path | str) -> bool:
    """Whether ``path`` is a run folder that :func:`start_job` made (job.json and status.json in it)."""
    path = Path(path)
    return (path.is_dir() and not path.is_symlink() and isinstance(read_json(path / SPEC_FILE, retries=4), dict)
            and isinstance(read_json(path / STATUS_FILE, retries=4), dict))


# Files that make a run folder worth a second thought before deleting it: adapters, models, checkpoints.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack")
WEIGHT_NAMES = frozenset({"adapter_config.json"})


def weight_files(path: Path | str, limit: int = 50) -> list[str]:
    """Adapter, model and checkpoint files under ``path`` (relative paths, at most ``limit``); symlinks
    are not followed."""
    path = Path(path)
    found: list[str] = []
    for folder, dirs, files in os.walk(path, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            if name in WEIGHT_NAMES or name.lower().endswith(WEIGHT_SUFFIXES):
                found.append(os.path.relpath(os.path.join(folder, name), path))
                if len(found) >= limit:
                    return found
    return found


def active_job(kind: str | None = None, root: Path | str | None = None) -> Job | None:
    """The running job (or else the next queued one) of ``kind``; None when nothing is under way."""
    running = queued = None
    for job in list_jobs(root, kind):
        state = job.state
        if state == "running" and running is None:
            running = job
        elif state == "queued":
            queued = job  # list is newest first: the last seen is the oldest
    return running or queued


def device_holder(root: Path | str | None = None) -> Job | None:
    """The running exclusive job (training, evaluation, ...) that queued jobs wait for, if any."""
    for job in list_jobs(root):
        st = job.raw_status()
        if st.get("exclusive") and st.get("state") == "running" and job.state == "running":
            return job
    return None
