"""What running work as a Job costs, against doing the same thing directly, in one run.

* start: seconds from start_job() to the child's first line of Python, vs subprocess.Popen of the
  same child (the supervisor's own Python start-up is the difference)
* abort: seconds from Job.abort() to the end status, for a child that exits on SIGTERM
* tick: one UI refresh of a run with 20,000 progress lines when one line arrived — reading only
  the new bytes (Job.read_progress(offset)) vs re-reading and parsing the whole progress.jsonl

Usage: python bench/jobs_overhead.py    (last line: one JSON object)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workbench.jobs import store as jobs  # noqa: E402

REPEATS = 5
CHILD = "import sys, time; open(sys.argv[1], 'w').write(repr(time.time())); time.sleep({sleep})"


def wait_file(path: Path, timeout: float = 60) -> float:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            text = path.read_text()
            if text:
                return float(text)
        except FileNotFoundError:
            pass
        time.sleep(0.002)
    raise RuntimeError(f"{path} not written")


def start_latency(root: Path) -> tuple[list[float], list[float]]:
    direct, job = [], []
    for i in range(REPEATS):
        stamp = root / f"direct-{i}.txt"
        t0 = time.time()
        proc = subprocess.Popen([sys.executable, "-c", CHILD.format(sleep=0), str(stamp)])
        direct.append(wait_file(stamp) - t0)
        proc.wait()
        stamp = root / f"job-{i}.txt"
        t0 = time.time()
        j = jobs.start_job("bench", f"start-{i}", [sys.executable, "-c", CHILD.format(sleep=0), str(stamp)], root=root)
        job.append(wait_file(stamp) - t0)
        j.wait(60)
    return direct, job


def abort_latency(root: Path) -> list[float]:
    out = []
    for i in range(REPEATS):
        stamp = root / f"abort-{i}.txt"
        j = jobs.start_job("bench", f"abort-{i}", [sys.executable, "-c", CHILD.format(sleep=300), str(stamp)],
                           root=root)
        wait_file(stamp)
        t0 = time.time()
        st = j.abort(grace=5)
        assert st["state"] == "aborted", st
        out.append(time.time() - t0)
    return out


def tick_cost(root: Path) -> tuple[float, float]:
    j = jobs.start_job("bench", "progress", [sys.executable, "-c", "pass"], root=root)
    j.wait(60)
    line = {"kind": "train", "step": 0, "total_steps": 20000, "epoch": 1.0, "loss": 1.234, "eval_loss": None,
            "lr": 1e-4, "grad_norm": 0.5, "tokens_per_second": 1000.0, "elapsed": 1.0, "eta": 2.0}
    with open(j.progress_path, "w") as f:
        for step in range(20000):
            f.write(json.dumps({**line, "step": step}) + "\n")
    offset = j.read_progress(0).offset
    incremental, full = [], []
    for step in range(20000, 20050):
        with open(j.progress_path, "a") as f:
            f.write(json.dumps({**line, "step": step}) + "\n")
        t0 = time.perf_counter()
        chunk = j.read_progress(offset)
        incremental.append(time.perf_counter() - t0)
        offset = chunk.offset
        assert [e["step"] for e in chunk.entries] == [step]
        t0 = time.perf_counter()
        entries = [json.loads(l) for l in j.progress_path.read_text().splitlines()]
        full.append(time.perf_counter() - t0)
        assert len(entries) == step + 1
    return statistics.median(incremental), statistics.median(full)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp:
        root = Path(tmp) / "runs"
        root.mkdir()
        direct, job = start_latency(root)
        aborts = abort_latency(root)
        inc, full = tick_cost(root)
    figures = {
        "start_direct_s": round(statistics.median(direct), 3),
        "start_job_s": round(statistics.median(job), 3),
        "start_overhead_ratio": round(statistics.median(job) / statistics.median(direct), 2),
        "abort_s": round(statistics.median(aborts), 3),
        "tick_incremental_ms": round(inc * 1000, 3),
        "tick_full_reread_ms": round(full * 1000, 3),
        "tick_speedup": round(full / inc, 1),
        "repeats": REPEATS,
        "cpus": os.cpu_count(),
    }
    print(f"start: direct {figures['start_direct_s']}s, as a job {figures['start_job_s']}s; abort "
          f"{figures['abort_s']}s; progress tick with 20k lines: {figures['tick_incremental_ms']} ms incremental vs "
          f"{figures['tick_full_reread_ms']} ms full re-read")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
