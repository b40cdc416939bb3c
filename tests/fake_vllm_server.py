"""A stand-in for vLLM's OpenAI-compatible server, for tests on machines without a CUDA GPU (vLLM needs one and is
not installed here).

It is started exactly as Workbench starts vLLM — ``PYTHON -m vllm.entrypoints.openai.api_server --model DIR ...`` —
through :func:`install`, which writes a stub ``vllm`` package and a wrapper interpreter for WORKBENCH_VLLM_PYTHON.
It checks the flags the way vLLM does (the --lora-modules forms, the --max-lora-rank choices, each adapter's rank
against it), serves ``/health``, ``/v1/models`` and streaming ``/v1/completions`` over real HTTP/1.1 (chunked
server-sent events, with vLLM's chunk fields: text, token_ids, finish_reason, stop_reason, and a usage chunk), and
appends what it got to the JSON-lines file $FAKE_VLLM_RECORD: its argv and pid, each request body, and whether
a client closed a stream before the end.

Its answers are made up: token k of an answer is the text `` w{k}`` with id 1000+k, after a first token
``"{model}:"`` (id 999), so a test can tell which adapter answered. Behaviour switches (environment):
FAKE_VLLM_DIE (exit 1 at start-up with that message), FAKE_VLLM_HANG (never answer), FAKE_VLLM_UNSERVED (an adapter
name missing from /v1/models), FAKE_VLLM_REFUSE (an adapter listed but answered 404, as for one that failed to
load), FAKE_VLLM_TOKEN_DELAY (seconds per token), FAKE_VLLM_STALL (a model that sends no token after its first
one until the client leaves), FAKE_VLLM_EOS_AFTER (generate the first stop_token_ids entry
after that many tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
FIRST_ID = 999
_record_lock = threading.Lock()


def install(directory: Path) -> Path:
    """Write a stub ``vllm`` package whose api_server module runs this file, and an executable wrapper that is a
    Python with that package importable. Point WORKBENCH_VLLM_PYTHON (or ``python=``) at the returned wrapper."""
    site = directory / "fake-vllm-site"
    module_dir = site / "vllm" / "entrypoints" / "openai"
    module_dir.mkdir(parents=True, exist_ok=True)
    (site / "vllm" / "__init__.py").write_text('__version__ = "0.32.0+fake"\n')
    (site / "vllm" / "entrypoints" / "__init__.py").write_text("")
    (module_dir / "__init__.py").write_text("")
    (module_dir / "api_server.py").write_text(
        "import runpy\n"
        f"runpy.run_path({str(Path(__file__).resolve())!r}, run_name='__main__')\n"
    )
    wrapper = directory / "python"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="{site}" exec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def record(entry: dict) -> None:
    path = os.environ.get("FAKE_VLLM_RECORD")
    if path:
        with _record_lock, open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")


def log(message: str) -> None:
    print(f"INFO {time.strftime('%H:%M:%S')} [fake vllm] {message}", flush=True)


def parse_lora_modules(items: list[str]) -> dict[str, str]:
    """vLLM's two --lora-modules forms: name=path (no ',') or a JSON object with name and path."""
    out = {}
    for item in items:
        if "=" in item and "," not in item:
            name, path = item.split("=")
        else:
            try:
                data = json.loads(item)
                name, path = data["name"], data["path"]
            except (ValueError, KeyError, TypeError):
                sys.exit(f"vllm serve: error: Invalid JSON format for --lora-modules: {item}")
        out[name] = path
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vllm serve")
    parser.add_argument("--model", required=True)
    parser.add_argument("--served-model-name", nargs="+")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--dtype", default="auto", choices=("auto", "half", "float16", "bfloat16", "float", "float32"))
    parser.add_argument("--max-model-len", type=int)
    parser.add_argument("--enable-lora", action="store_true")
    parser.add_argument("--max-loras", type=int, default=1)
    parser.add_argument("--max-lora-rank", type=int, default=16, choices=LORA_RANKS)
    parser.add_argument("--lora-modules", nargs="+", default=[])
    parser.add_argument("--disable-uvicorn-access-log", action="store_true")
    parser.add_argument("--trust-remote-code", action="store_true")
    return parser.parse_args(argv)


def check_model_and_adapters(args: argparse.Namespace) -> dict[str, str]:
    if not (Path(args.model) / "config.json").is_file():
        sys.exit(f"OSError: {args.model} does not appear to have a file named config.json")
    adapters = parse_lora_modules(args.lora_modules)
    if adapters and not args.enable_lora:
        sys.exit("ValueError: --lora-modules needs --enable-lora")
    for name, path in adapters.items():
        config = json.loads((Path(path) / "adapter_config.json").read_text())
        ranks = [config["r"], *(config.get("rank_pattern") or {}).values()]
        if max(ranks) > args.max_lora_rank:
            sys.exit(f"ValueError: LoRA rank {max(ranks)} of {name} is greater than max_lora_rank "
                     f"{args.max_lora_rank}.")
        log(f"Loaded new LoRA adapter: name '{name}', path '{path}'")
    return adapters


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked streams, as uvicorn answers
    server_version = "fake-vllm"

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler's signature
        pass

    # -- plain answers --------------------------------------------------------------------------------
    def send_json(self, status: int, data: dict) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_error_json(self, status: int, message: str, kind: str) -> None:
        self.send_json(status, {"error": {"message": message, "type": kind, "param": None, "code": status}})

    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path == "/health":
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/v1/models":
            names = [n for n in self.server.served if n != os.environ.get("FAKE_VLLM_UNSERVED")]
            self.send_json(200, {"object": "list", "data": [{"id": n, "object": "model"} for n in names]})
        else:
            self.send_error_json(404, "Not Found", "NotFoundError")

    # -- completions ----------------------------------------------------------------------------------
    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        record({"event": "request", "body": body})
        model = body.get("model")
        if model not in self.server.served or model == os.environ.get("FAKE_VLLM_REFUSE"):
            return self.send_error_json(404, f"The model `{model}` does not exist.", "NotFoundError")
        prompt = body.get("prompt")
        if not (isinstance(prompt, list) and prompt and all(isinstance(t, int) and t >= 0 for t in prompt)):
            return self.send_error_json(400, "prompt: expected a list of token ids", "BadRequestError")
        if body.get("stream_options") and not body.get("stream"):
            return self.send_error_json(400, "Stream options can only be defined when `stream=True`.",
                                        "BadRequestError")
        max_tokens = body.get("max_tokens", 16)
        limit = self.server.max_model_len
        if limit and len(prompt) + max_tokens > limit:
            return self.send_error_json(
                400, f"This model's maximum context length is {limit} tokens. However, you requested "
                     f"{len(prompt) + max_tokens} tokens ({len(prompt)} in the messages, {max_tokens} in the "
                     "completion). Please reduce the length of the messages or completion.", "BadRequestError")
        if not body.get("stream"):
            return self.send_error_json(400, "this fake server only streams", "BadRequestError")
        self.stream(body, model, prompt, max_tokens)

    def send_chunk(self, data: str) -> None:
        payload = f"data: {data}\n\n".encode()
        self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
        self.wfile.flush()

    def stall(self, most: float = 60) -> None:
        """No next token until the client leaves (a long prefill or a busy GPU); then a write would fail."""
        deadline = time.monotonic() + most
        while time.monotonic() < deadline:
            readable, _, _ = select.select([self.connection], [], [], 0.05)
            if readable and self.connection.recv(1, socket.MSG_PEEK) == b"":
                raise ConnectionResetError("the client closed the stream")

    def stream(self, body: dict, model: str, prompt: list[int], max_tokens: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        delay = float(os.environ.get("FAKE_VLLM_TOKEN_DELAY", "0"))
        eos_after = int(os.environ.get("FAKE_VLLM_EOS_AFTER", "0"))
        stops = body.get("stop") or []
        stops = [stops] if isinstance(stops, str) else stops
        stop_ids = body.get("stop_token_ids") or []
        base = {"id": "cmpl-fake", "object": "text_completion", "created": int(time.time()), "model": model}
        text, generated, sent = "", 0, 0
        try:
            while True:
                if eos_after and generated == eos_after and stop_ids:
                    piece, token, finish, reason = "", stop_ids[0], "stop", stop_ids[0]
                else:
                    piece = f"{model}:" if generated == 0 else f" w{generated}"
                    token, finish, reason = (FIRST_ID if generated == 0 else 1000 + generated), None, None
                    full = text + piece
                    hits = [(full.find(s), s) for s in stops if s and s in full]
                    if hits:  # as vLLM: the text ends before the stop string, which is the stop_reason
                        at, reason = min(hits)
                        piece, finish = full[:at][len(text):], "stop"
                generated += 1
                if finish is None and generated >= max_tokens:
                    finish = "length"
                choice = {"index": 0, "text": piece, "logprobs": None, "finish_reason": finish,
                          "stop_reason": reason}
                if body.get("return_token_ids"):
                    choice["token_ids"] = [token]
                    if sent == 0:
                        choice["prompt_token_ids"] = prompt
                self.send_chunk(json.dumps({**base, "choices": [choice], "usage": None}))
                sent += 1
                text += piece
                if finish:
                    break
                if delay:
                    time.sleep(delay)
                if model == os.environ.get("FAKE_VLLM_STALL"):
                    self.stall()
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": len(prompt), "completion_tokens": generated,
                         "total_tokens": len(prompt) + generated}
                self.send_chunk(json.dumps({**base, "choices": [], "usage": usage}))
            self.send_chunk("[DONE]")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            record({"event": "finished", "model": model, "tokens": generated, "finish_reason": finish})
        except (BrokenPipeError, ConnectionResetError):
            record({"event": "disconnected", "model": model, "chunks_sent": sent})
            self.close_connection = True


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    record({"event": "start", "argv": argv, "pid": os.getpid()})
    log(f"vLLM API server version 0.32.0+fake; args: {argv}")
    if os.environ.get("FAKE_VLLM_DIE"):
        print("Traceback (most recent call last):", flush=True)
        print(f"RuntimeError: {os.environ['FAKE_VLLM_DIE']}", flush=True)
        sys.exit(1)
    adapters = check_model_and_adapters(args)
    if os.environ.get("FAKE_VLLM_HANG"):
        log("loading the model ... (FAKE_VLLM_HANG: forever)")
        while True:
            time.sleep(3600)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    server.served = [*(args.served_model_name or [args.model]), *adapters]
    server.max_model_len = args.max_model_len
    log(f"Starting vLLM API server on http://{args.host}:{args.port}")
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
