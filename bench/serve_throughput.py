"""API throughput under load: ``python -m workbench api`` on the bundled SmolLM2-135M-Instruct with two adapters,
one streaming client alone against 8 concurrent streaming clients (half of them asking an adapter), 64 new tokens
each (``ignore_eos``, so every answer is 64 tokens; the count is the server's usage figure).

Figures: aggregate completion tokens/s for 1 client and for 8 (and their ratio: continuous batching lets the 8
share decode steps), p50/p95 time to first token under load, and that no request was lost: every stream
ends with ``data: [DONE]`` and carried usage. The server is a real subprocess on a loopback port; clients are
threads speaking HTTP (http.client), so the figures include the server's SSE path.

Aim (issue 15): 8 clients >= 4x the aggregate tokens/s of 1, no request lost.
Usage: python bench/serve_throughput.py [--clients 8] [--tokens 64] [--rounds 2] [--dtype auto]
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(adapters: dict[str, str], port: int, dtype: str, log: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "workbench", "api", "--model", "smollm2-135m-instruct", "--port", str(port),
            "--max-batch", "16", "--infer_dtype", dtype]
    for name, path in adapters.items():
        argv += ["--adapter", f"{name}={path}"]
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    deadline = time.time() + 300
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the API server exited:\n{log.read_text()[-3000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            pass
        if time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise RuntimeError("the API server did not answer /health in 300 s")
        time.sleep(0.5)


def stream_one(port: int, model: str, tokens: int) -> dict:
    """One streaming chat completion; its TTFT, completion tokens (usage), and whether it ended with [DONE]."""
    # ignore_eos: every row runs its `tokens` (a random adapter may end its answer early, leaving the batch).
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": tokens, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": True}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    ttft, usage, done = None, None, False
    if response.status != 200:
        return {"ok": False, "error": f"HTTP {response.status}: {response.read()[:300]!r}"}
    for raw in response:
        line = raw.decode().strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            done = True
            break
        chunk = json.loads(data)
        if chunk.get("usage"):
            usage = chunk["usage"]
        if ttft is None and any((c.get("delta") or {}).get("content") for c in chunk.get("choices", [])):
            ttft = time.perf_counter() - started
    conn.close()
    return {"ok": done and usage is not None, "ttft": ttft, "tokens": (usage or {}).get("completion_tokens", 0),
            "seconds": time.perf_counter() - started}


def run_clients(port: int, models: list[str], tokens: int) -> tuple[float, list[dict]]:
    results: list[dict] = [{} for _ in models]

    def client(i: int, model: str) -> None:
        try:
            results[i] = stream_one(port, model, tokens)
        except Exception as exc:  # counted as lost
            results[i] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

    threads = [threading.Thread(target=client, args=(i, m)) for i, m in enumerate(models)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started, results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()

    from chat_latency import make_adapters  # noqa: E402  (bench/ is on sys.path when run as a script)

    from workbench.models.bundled import ensure_converted

    tmp = tempfile.TemporaryDirectory(prefix="wb-bench-serve-")
    adapters = make_adapters(Path(ensure_converted()), Path(tmp.name), 2)
    port = free_port()
    log = Path(tmp.name) / "api.log"
    proc = start_server(adapters, port, args.dtype, log)
    try:
        stream_one(port, "base", 8)  # warm-up
        names = ["base", *adapters]
        many = [names[0] if i % 2 == 0 else names[1 + (i // 2) % len(adapters)] for i in range(args.clients)]
        one_rates, many_rates, ttfts, lost, errors = [], [], [], 0, []
        for _ in range(args.rounds):  # interleaved: both sides see the same machine load
            seconds, results = run_clients(port, ["base"], args.tokens)
            one_rates.append(sum(r.get("tokens", 0) for r in results) / seconds)
            seconds, results = run_clients(port, many, args.tokens)
            many_rates.append(sum(r.get("tokens", 0) for r in results) / seconds)
            ttfts += [r["ttft"] for r in results if r.get("ttft") is not None]
            lost += sum(not r.get("ok") for r in results)
            errors += [r["error"] for r in results if r.get("error")]
        health = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        health.request("GET", "/health")
        stats = json.loads(health.getresponse().read())
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    one, concurrent = statistics.median(one_rates), statistics.median(many_rates)
    ttfts.sort()
    from workbench.machine import cpu_model

    cpu = cpu_model()
    result = {
        "cpu": cpu, "load_avg_1min": round(os.getloadavg()[0], 2), "model": "smollm2-135m-instruct",
        "dtype": args.dtype, "clients": args.clients, "new_tokens": args.tokens, "rounds": args.rounds,
        "one_client_tokens_per_s": round(one, 1), "concurrent_tokens_per_s": round(concurrent, 1),
        "concurrency_ratio": round(concurrent / one, 2),
        "ttft_p50_ms": round(1000 * ttfts[len(ttfts) // 2], 1) if ttfts else None,
        "ttft_p95_ms": round(1000 * ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))], 1) if ttfts else None,
        "requests": args.rounds * (args.clients + 1), "lost": lost, "errors": errors[:3],
        "largest_batch": stats.get("largest_batch"),
        "aim_ratio_ge_4x": concurrent / one >= 4, "aim_none_lost": lost == 0,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
