"""``python -m workbench.jobs.supervisor RUN_DIR``: run one job and record how it ended.

Started by :func:`workbench.jobs.start_job` in a session of its own, so it outlives the UI. It
starts the child from ``job.json``'s argv in a new process group with stdout and stderr going
straight into ``log.txt``, waits for it, and writes the end state (finished / failed / aborted,
exit code, the error line) into ``status.json``; then it starts the next queued job.

SIGTERM (sent by ``Job.abort``) means abort: the child's process group gets SIGTERM, and whatever
is still alive after the grace period gets SIGKILL, so no process is left behind.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil  # imported before any signal handler exists

from workbench.jobs import store as jobs
from workbench.rundir import last_lines

LOW_DISK_BYTES = 1 << 20  # below this, a failure is reported as "disk full"
CGROUP_ROOT = Path("/sys/fs/cgroup")
# The child gets a process group of its own, so abort can signal it and everything it starts.
_NEW_GROUP = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}


def _become_subreaper() -> None:
    """Linux: orphaned descendants of the job are re-parented to us, not to init, so we can stop them."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _parse_oom_kill(text: str) -> int | None:
    for entry in text.splitlines():
        key, _, value = entry.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return None


def oom_counter(pid: int | str = "self", root: Path | None = None) -> Path | None:
    """The file that counts the kernel's out-of-memory kills in the memory cgroup of ``pid``: cgroup v2's
    ``<root>/<path>/memory.events``, or v1's ``<root>/memory/<path>/memory.oom_control`` (``<path>`` from
    ``/proc/<pid>/cgroup``); None where there is none to read."""
    root = CGROUP_ROOT if root is None else root
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    candidates: list[Path] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        rel = path.strip().lstrip("/")
        if hierarchy == "0" and not controllers:  # v2 (or the unified part of a hybrid set-up)
            candidates += [root / rel / "memory.events", root / "unified" / rel / "memory.events"]
        elif "memory" in controllers.split(","):
            candidates.append(root / "memory" / rel / "memory.oom_control")
    # In a container the listed path may be the host's while the container's own cgroup is mounted at the root.
    candidates += [root / "memory.events", root / "memory" / "memory.oom_control"]
    for file in candidates:
        try:
            if _parse_oom_kill(file.read_text()) is not None:
                return file
        except OSError:
            continue
    return None


def count_oom_kills(counter: Path) -> int | None:
    """OOM kills so far in ``counter``'s cgroup and the cgroups below it. v2's memory.events already includes
    them; v1 counts each cgroup on its own, so the files below are added up."""
    try:
        total = _parse_oom_kill(counter.read_text())
    except OSError:
        return None
    if total is None or counter.name == "memory.events":
        return total
    for sub, _, files in os.walk(counter.parent):
        if Path(sub) != counter.parent and counter.name in files:
            try:
                total += _parse_oom_kill((Path(sub) / counter.name).read_text()) or 0
            except OSError:  # removed meanwhile
                pass
    return total


class Supervisor:
    def __init__(self, run_dir: Path):
        self.job = jobs.Job(run_dir)
        self.spec = self.job.spec
        self.child: subprocess.Popen | None = None
        self.abort_at: float | None = None
        self.abort_signal = signal.SIGTERM
        self.doomed: list = []  # descendants seen at abort time (they may leave the group)
        self.oom_file: Path | None = None  # where the kernel counts OOM kills in the job's cgroup
        self.oom_before: int | None = None  # that count when the job started

    # -- signals --
    def on_signal(self, signum, frame) -> None:
        # Only note it: the main loop does the work (a handler may interrupt anything, even an import).
        if self.abort_at is None:
            self.abort_at = time.monotonic()
            self.abort_signal = signum

    def _terminate(self) -> None:
        self.log(f"abort requested ({signal.Signals(self.abort_signal).name}); stopping the job")
        if self.child is None:
            return
        try:
            self.doomed = psutil.Process(self.child.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            self.doomed = []
        jobs.kill_group(self.child.pid, signal.SIGTERM)
        for proc in self.doomed:
            try:
                proc.terminate()
            except psutil.NoSuchProcess:
                pass

    def _kill_all(self) -> None:
        if self.child is not None:
            jobs.kill_group(self.child.pid, signal.SIGKILL)
        for proc in self.doomed:
            try:
                proc.kill()
            except Exception:
                pass

    def _reap_leftovers(self) -> None:
        leftovers = psutil.Process().children(recursive=True)
        for proc in leftovers:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(leftovers, timeout=5)

    def grace(self) -> float:
        return float(self.job.raw_status().get("abort_grace") or self.spec.get("grace", jobs.DEFAULT_GRACE))

    # -- output --
    def log(self, message: str) -> None:
        """A line of our own in log.txt (stdout is log.txt); a full disk must not stop the supervisor."""
        try:
            print(f"[workbench] {time.strftime('%Y-%m-%d %H:%M:%S')} {message}", flush=True)
        except (OSError, RuntimeError):  # disk full, or a signal arrived mid-print
            pass

    def finish(self, state: str, exit_code: int | None, error: str | None) -> None:
        fields = {"state": state, "exit_code": exit_code, "ended": time.time(), "error": error}
        try:
            with jobs._locked(self.job.path / jobs._STATUS_LOCK):
                st = self.job.raw_status()
                st.update(fields)
                jobs._write_status(self.job.path / jobs.STATUS_FILE, st)
        except OSError as exc:  # even the in-place overwrite failed; the UI will settle it as failed
            print(f"[workbench] cannot write {self.job.path / jobs.STATUS_FILE}: {exc}", file=sys.stderr, flush=True)

    def failure_reason(self, code: int) -> str:
        tail = last_lines(self.job.log_path, 40)
        try:
            free = shutil.disk_usage(self.job.path).free
        except OSError:
            free = None
        disk_full = (free is not None and free < LOW_DISK_BYTES) or any("No space left on device" in l for l in tail)
        reason = jobs.error_from_log(tail)
        if code == -signal.SIGKILL:
            what = "killed (SIGKILL)"
            message = what + self.sigkill_cause() + (f". The last error in its log: {reason}" if reason else "")
        else:
            if code < 0:
                what = (f"killed by {signal.Signals(-code).name}" if -code in signal.valid_signals()
                        else f"signal {-code}")
            else:
                what = f"exited with code {code}"
            message = f"{what}: {reason}" if reason else what
        if disk_full:
            message = (f"the disk holding {self.job.path} is full ({free if free is not None else '?'} bytes free), "
                       f"so the job could not write its output ({what})" + (f"; {reason}" if reason else "")
                       + ". Free some space, then start it again or resume from its last checkpoint.")
        return message[: jobs.MAX_ERROR_CHARS]

    def sigkill_cause(self) -> str:
        """Who sent the SIGKILL, as far as the evidence goes: the kernel's OOM killer only when the cgroup's
        oom_kill counter rose while the job ran (dmesg is usually unreadable and is not consulted)."""
        after = count_oom_kills(self.oom_file) if self.oom_file is not None else None
        if self.oom_before is not None and after is not None and after > self.oom_before:
            return (f", most likely by the kernel's out-of-memory killer: it stopped {after - self.oom_before} "
                    f"process(es) in the job's cgroup while the job ran (oom_kill in {self.oom_file} went from "
                    f"{self.oom_before} to {after}). The job needed more memory than the machine (or its memory "
                    "limit) allows")
        checked = (f"; no out-of-memory kill was recorded in its cgroup ({self.oom_file})"
                   if self.oom_before is not None and after is not None
                   else "; check the system log (dmesg) for an out-of-memory kill")
        return (" by something outside Workbench: a `kill -9`, a time or resource limit of a scheduler or container, "
                f"or the system running out of memory{checked}")

    # -- the run --
    def run(self) -> int:
        _become_subreaper()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        argv = self.spec["argv"]
        env = {**os.environ, **{str(k): str(v) for k, v in (self.spec.get("env") or {}).items()}}
        self.log(f"{self.spec.get('kind', 'job')} {self.job.name}: {shlex.join(argv)}")
        if self.abort_at is not None:
            self.log("aborted before it started")
            self.finish("aborted", None, "aborted before it started")
            return 0
        self.oom_file = oom_counter()  # the child starts in our cgroup (or one below it)
        self.oom_before = count_oom_kills(self.oom_file) if self.oom_file is not None else None
        try:
            # stdout is log.txt (opened by start_job): the child writes there directly, no pipe to drain.
            self.child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sys.stdout, stderr=subprocess.STDOUT,
                                          cwd=self.spec.get("cwd") or None, env=env, **_NEW_GROUP)
        except OSError as exc:
            self.log(f"error: cannot start {argv[0]}: {exc.strerror or exc}")
            self.finish("failed", None, f"cannot start {argv[0]}: {exc.strerror or exc}")
            return 0
        started = time.time()
        try:
            ctime = psutil.Process(self.child.pid).create_time()
        except psutil.NoSuchProcess:
            ctime = None
        with jobs._locked(self.job.path / jobs._STATUS_LOCK):
            st = self.job.raw_status()
            st.update(state="running", pid=self.child.pid, pgid=self.child.pid, pid_ctime=ctime, started=started,
                      supervisor_pid=os.getpid(), supervisor_ctime=psutil.Process().create_time())
            try:
                jobs._write_status(self.job.path / jobs.STATUS_FILE, st)
            except OSError as exc:
                self.log(f"cannot write status.json: {exc}")
        terminated = killed = False
        while True:
            if self.abort_at is not None and not terminated:
                self._terminate()
                terminated = True
            try:
                code = self.child.wait(timeout=0.1 if self.abort_at is not None else 0.25)
                break
            except subprocess.TimeoutExpired:
                if terminated and not killed and time.monotonic() - self.abort_at > self.grace():
                    self.log("the job did not stop in time; killing it")
                    self._kill_all()
                    killed = True
        # Anything the child left running goes too: its group, what it spawned before an abort, and
        # (we are their subreaper) descendants that moved to a group or session of their own.
        if self.abort_at is not None:
            self._kill_all()
        else:
            jobs.kill_group(self.child.pid, signal.SIGKILL)
        self._reap_leftovers()
        seconds = time.time() - started
        if self.abort_at is not None:
            self.log(f"aborted after {seconds:.1f}s")
            self.finish("aborted", code, "aborted")
        elif code == 0:
            self.log(f"finished in {seconds:.1f}s")
            self.finish("finished", 0, None)
        else:
            reason = self.failure_reason(code)
            self.log(f"failed after {seconds:.1f}s: {reason}")
            self.finish("failed", code, reason)
        return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python -m workbench.jobs.supervisor RUN_DIR", file=sys.stderr)
        return 2
    run_dir = Path(argv[0])
    try:
        sup = Supervisor(run_dir)
    except Exception as exc:  # no job.json: nothing to run, nothing to record
        print(f"[workbench] error: {exc}", file=sys.stderr, flush=True)
        return 1
    try:
        sup.run()
    except BaseException as exc:  # a bug here must still leave an end status and no children
        sup._kill_all()
        sup.finish("failed", None, f"the job supervisor crashed: {type(exc).__name__}: {exc}")
        raise
    finally:
        try:
            jobs.advance_queue(run_dir.parent)
        except Exception as exc:
            print(f"[workbench] could not start the next queued job: {exc}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
