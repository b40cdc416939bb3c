"""`make bench`'s runner refuses a benchmark name it does not have, before it runs or writes anything."""

from __future__ import annotations

import subprocess
import sys

from helpers import REPO_ROOT


def test_an_unknown_benchmark_name_is_refused_with_the_names_there_are():
    results = REPO_ROOT / "bench" / "results" / "latest.json"
    before = results.stat().st_mtime_ns if results.exists() else None
    done = subprocess.run([sys.executable, "bench/run_all.py", "chat_latency", "no_such_bench"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""  # chat_latency did not run either
    assert "no benchmark named no_such_bench" in done.stderr and "chat_latency, data_preprocess" in done.stderr
    assert (results.stat().st_mtime_ns if results.exists() else None) == before
