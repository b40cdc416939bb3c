"""The vllm engine: vLLM's OpenAI-compatible server as a subprocess, serving the base and its LoRA adapters.

vLLM pins its own transformers, so it lives in its own environment (``.venv/vllm``, ``make extras EXTRAS=vllm``)
and never in this process. :meth:`VllmBackend.start` runs ``python -m vllm.entrypoints.openai.api_server`` from
that environment on a free loopback port (its own process group, output in a log file), waits for ``/health``,
and checks that every adapter is served. Each row is one streaming ``POST /v1/completions`` whose ``prompt`` is
the token ids our templates rendered, so both engines answer the same prompts; deltas go into the row's
:class:`~workbench.infer.engine.RowHandle`. Cancelling a row closes its HTTP stream (vLLM then aborts it).

The server flags and request fields were checked against recent vLLM sources (the openai entrypoint's
cli_args.py, completion/protocol.py, config/lora.py), not against an installed copy of the 0.32.0 pinned in
requirements-vllm.txt: ``--enable-lora``, ``--lora-modules`` in its JSON form, the ``--max-lora-rank`` choices,
``--max-loras``, ``--served-model-name``, ``--disable-uvicorn-access-log``; ``prompt`` as token ids,
``stop_token_ids``, ``return_token_ids``, ``stream_options.include_usage``, ``stop_reason``.
"""

from __future__ import annotations

import atexit
import http.client
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from pathlib import Path

from workbench.config.base import WorkbenchError
from workbench.config.generation import GenerationArgs
from workbench.config.model import DTYPES, ENGINES
from workbench.infer.engine import BASE, ContextLengthError, RowHandle, RowSpec
from workbench.paths import PROJECT_ROOT
from workbench.rundir import last_lines

PYTHON_ENV = "WORKBENCH_VLLM_PYTHON"
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
BASE_SERVED_NAME = BASE  # adapters may not be named "base" (config/model.py), so the names never clash
# vLLM's LoRAConfig accepts only these max_lora_rank values (MaxLoRARanks).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
LOG_TAIL_LINES = 25

NO_CUDA = "the vllm engine needs a CUDA GPU; this machine has none — use engine transformers"
NOT_INSTALLED = "vLLM is not installed: run `make extras EXTRAS=vllm` (it installs into .venv/vllm)"
FORCED_TOOL_CALL = "forcing a tool call is not supported with the vllm engine; use engine transformers"


# -- is the engine usable here? ---------------------------------------------------------------------

def vllm_python() -> Path:
    """The interpreter of vLLM's environment: $WORKBENCH_VLLM_PYTHON, else .venv/vllm/bin/python."""
    override = os.environ.get(PYTHON_ENV)
    return Path(override).expanduser() if override else PROJECT_ROOT / ".venv" / "vllm" / "bin" / "python"


def _installed_problem(python: Path) -> str | None:
    if not (python.is_file() and os.access(python, os.X_OK)):
        where = f" ({PYTHON_ENV}={python} is not an executable file)" if os.environ.get(PYTHON_ENV) else ""
        return NOT_INSTALLED + where
    probe = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('vllm') else 3)"
    try:
        done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{NOT_INSTALLED} ({python} could not be run: {exc})"
    if done.returncode != 0:
        return f"{NOT_INSTALLED} ({python} has no vllm package)"
    return None


def select_engine_problem(engine: str, device: str = "auto", *, quantization_bit: int | None = None,
                          python: str | os.PathLike | None = None) -> str | None:
    """None when ``engine`` can run here with these options, else what stops it (one sentence, with the fix).

    The transformers engine runs anywhere. vllm needs a CUDA GPU (device auto, cuda or cuda:N), an unquantized
    base (vLLM does not take our bitsandbytes loading), and vLLM installed in its own environment.
    """
    if engine not in ENGINES:
        return f"engine {engine!r} is not one of: {', '.join(ENGINES)}"
    if engine == "transformers":
        return None
    if device in ("cpu", "mps"):
        return f"the vllm engine runs on CUDA GPUs only, but device is {device}; set device to auto or cuda, " \
               "or use engine transformers"
    if quantization_bit:
        return f"the vllm engine does not load bitsandbytes-quantized models (quantization_bit={quantization_bit});" \
               " clear quantization_bit or use engine transformers"
    import torch  # heavy: only when vllm was asked for

    if not torch.cuda.is_available():
        return NO_CUDA
    if device.startswith("cuda:"):
        index, count = device.split(":", 1)[1], torch.cuda.device_count()
        if not index.isdigit() or int(index) >= count:
            return f"device {device} does not exist: this machine has {count} CUDA GPU(s) (cuda:0 … cuda:{count - 1})"
    return _installed_problem(Path(python).expanduser() if python else vllm_python())


# -- adapters → server flags ------------------------------------------------------------------------

def adapter_rank(name: str, path: str | os.PathLike) -> int:
    """The largest LoRA rank in an adapter's adapter_config.json (``r`` and any ``rank_pattern`` override)."""
    config_path = Path(path).expanduser() / "adapter_config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WorkbenchError(f"adapter {name}: {config_path} does not exist (not a PEFT LoRA adapter directory)") \
            from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WorkbenchError(f"adapter {name}: cannot read {config_path}: {exc}") from None
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise WorkbenchError(f"adapter {name}: {config_path} is a {config.get('peft_type')} adapter; "
                             "vLLM serves LoRA adapters only — use engine transformers")
    if config.get("use_dora"):
        raise WorkbenchError(f"adapter {name}: DoRA adapters (use_dora in {config_path}) are not served by vLLM; "
                             "use engine transformers")
    ranks = [config.get("r")] + list((config.get("rank_pattern") or {}).values())
    if not all(isinstance(r, int) and r > 0 for r in ranks):
        raise WorkbenchError(f"adapter {name}: {config_path} has no valid LoRA rank r (got {config.get('r')!r})")
    return max(ranks)


def max_lora_rank(ranks: list[int]) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds every adapter's rank."""
    need = max(ranks, default=1)
    for allowed in LORA_RANKS:
        if allowed >= need:
            return allowed
    raise WorkbenchError(f"an adapter has LoRA rank {need}, but vLLM serves ranks up to {LORA_RANKS[-1]}; "
                         "use engine transformers")


def server_argv(python: str | os.PathLike, model_dir: str, adapters: dict[str, str], *, port: int, dtype: str,
                max_model_len: int | None = None, trust_remote_code: bool = False) -> list[str]:
    """The command that serves ``model_dir`` (as "base") and each adapter (under its name) on 127.0.0.1:port."""
    argv = [str(python), "-m", SERVER_MODULE, "--model", str(model_dir), "--served-model-name", BASE_SERVED_NAME,
            "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype, "--disable-uvicorn-access-log"]
    if max_model_len:
        argv += ["--max-model-len", str(max_model_len)]
    if trust_remote_code:
        argv.append("--trust-remote-code")
    if adapters:
        ranks = [adapter_rank(name, path) for name, path in adapters.items()]
        # The JSON form of --lora-modules: the NAME=DIR form breaks on paths with '=' or ','.
        modules = [json.dumps({"name": name, "path": str(Path(path).expanduser().resolve())})
                   for name, path in adapters.items()]
        argv += ["--enable-lora", "--max-loras", str(len(adapters)), "--max-lora-rank", str(max_lora_rank(ranks)),
                 "--lora-modules", *modules]
    return argv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _error_message(body: bytes) -> str:
    """The message of an OpenAI-style error body ({"error": {"message"}} or vLLM's older {"message"})."""
    try:
        data = json.loads(body.decode("utf-8", errors="replace"))
    except ValueError:
        return body.decode("utf-8", errors="replace").strip()[:500] or "(empty response)"
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return json.dumps(data)[:500]


# -- the backend ------------------------------------------------------------------------------------

class _Stream:
    """One row's HTTP stream, so a cancel (or close) can shut its socket from another thread."""

    def __init__(self, handle: RowHandle, sock: socket.socket | None):
        self.handle = handle
        self.sock = sock  # kept here: http.client drops conn.sock once a response says it will close
        self.closed = False

    def shut(self) -> None:
        if self.closed:
            return
        self.closed = True
        sock = self.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the reader blocked in recv(); the server sees a disconnect
            except OSError:
                pass


class VllmBackend:
    """A running vLLM server and the rows streaming from it. Use :meth:`start`; :meth:`close` stops it."""

    def __init__(self, process: subprocess.Popen, port: int, adapters: dict[str, str], *, log_path: Path,
                 tokenizer, stop_token_ids, dtype: str):
        self.process = process
        self.port = port
        self.adapters = dict(adapters)
        self.log_path = log_path
        self.tokenizer = tokenizer
        self.dtype = dtype
        eos = getattr(tokenizer, "eos_token_id", None)
        self.stop_token_ids = list(dict.fromkeys(int(t) for t in stop_token_ids))
        self._end_ids = set(self.stop_token_ids) | ({int(eos)} if isinstance(eos, int) else set())
        self._streams: set[_Stream] = set()
        self._lock = threading.Condition()
        self._closed = False
        self._keep_log = False
        self._watcher = threading.Thread(target=self._watch_cancels, daemon=True, name="workbench-vllm-cancel")
        self._watcher.start()
        # Started in its own session, the server would outlive the app: stop it at interpreter exit too.
        ref = weakref.ref(self)
        atexit.register(lambda: (backend := ref()) is not None and backend.close())

    # -- start -----------------------------------------------------------------------------------
    @classmethod
    def start(cls, model_dir: str, adapters: dict[str, str], *, dtype: str, tokenizer, stop_token_ids,
              python: str | None = None, startup_timeout: float = 600, device: str = "auto",
              max_model_len: int | None = None, trust_remote_code: bool = False) -> "VllmBackend":
        """Start the server for ``model_dir`` with ``adapters`` ({name: dir}) and wait until it answers.

        Errors (bad options, a server that exits or does not answer within ``startup_timeout`` seconds, an
        adapter it does not serve) are WorkbenchErrors with the last lines of the server's log."""
        if dtype not in DTYPES:
            raise WorkbenchError(f"infer_dtype {dtype!r} is not one of: {', '.join(DTYPES)}")
        if not Path(model_dir).expanduser().is_dir():
            raise WorkbenchError(f"the vllm engine serves a local model directory; {model_dir} is not one")
        if BASE_SERVED_NAME in adapters:
            raise WorkbenchError(f"an adapter may not be named {BASE_SERVED_NAME!r}: that is the base model's name")
        interpreter = Path(python).expanduser() if python else vllm_python()
        problem = _installed_problem(interpreter)
        if problem:
            raise WorkbenchError(problem)
        port = _free_port()
        argv = server_argv(interpreter, str(Path(model_dir).expanduser()), adapters, port=port, dtype=dtype,
                           max_model_len=max_model_len, trust_remote_code=trust_remote_code)
        env = dict(os.environ, VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", HF_HUB_OFFLINE="1")
        if device.startswith("cuda:"):
            env["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
        fd, log_name = tempfile.mkstemp(prefix="workbench-vllm-", suffix=".log")
        log_path = Path(log_name)
        with os.fdopen(fd, "wb") as log:
            log.write(("$ " + " ".join(argv) + "\n").encode())
            log.flush()
            try:
                process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                           env=env, start_new_session=True)
            except OSError as exc:
                raise WorkbenchError(f"cannot start the vllm server ({interpreter}): {exc}") from None
        backend = cls(process, port, adapters, log_path=log_path, tokenizer=tokenizer,
                      stop_token_ids=stop_token_ids, dtype=dtype)
        try:
            backend._wait_ready(startup_timeout)
            backend._check_served()
        except BaseException:
            backend.close()
            raise
        return backend

    def _log_tail(self) -> str:
        self._keep_log = True  # an error names the log: it must outlive close()
        lines = last_lines(self.log_path, LOG_TAIL_LINES)
        if not lines:
            return f"its log ({self.log_path}) is empty"
        return f"last lines of its log ({self.log_path}):\n" + "\n".join(lines)

    def _exited_error(self, doing: str) -> WorkbenchError:
        return WorkbenchError(f"the vllm server exited with code {self.process.returncode} {doing}; {self._log_tail()}")

    def _get(self, path: str, timeout: float) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def _wait_ready(self, timeout: float) -> None:
        # vLLM binds its port before the engine is up; until then a request hangs or is refused, so each probe
        # has its own short timeout.
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise self._exited_error("while starting")
            try:
                status, _ = self._get("/health", timeout=2)
                if status == 200:
                    return
            except (OSError, http.client.HTTPException):
                pass
            if time.monotonic() >= deadline:
                raise WorkbenchError(f"the vllm server did not answer /health within {timeout:g} s (still loading "
                                     f"the model?), so it was stopped; {self._log_tail()}")
            time.sleep(0.5)

    def _check_served(self) -> None:
        status, body = self._get("/v1/models", timeout=30)
        if status != 200:
            raise WorkbenchError(f"the vllm server answered /v1/models with HTTP {status}: {_error_message(body)}")
        try:
            served = {m.get("id") for m in json.loads(body).get("data", [])}
        except (ValueError, AttributeError, TypeError):
            raise WorkbenchError(f"the vllm server answered /v1/models with something else than a model list: "
                                 f"{body[:200]!r}") from None
        missing = [name for name in (BASE_SERVED_NAME, *self.adapters) if name not in served]
        if missing:
            raise WorkbenchError(f"the vllm server does not serve {', '.join(missing)} (it serves: "
                                 f"{', '.join(sorted(str(s) for s in served)) or 'nothing'}); {self._log_tail()}")

    # -- what it serves --------------------------------------------------------------------------
    @property
    def adapter_names(self) -> list[str]:
        return list(self.adapters)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def served_name(self, adapter: str | None) -> str:
        if adapter in (None, "", BASE):
            return BASE_SERVED_NAME
        if adapter not in self.adapters:
            raise WorkbenchError(f"unknown model or adapter {adapter!r}; available: "
                                 f"{', '.join([BASE, *self.adapters])}")
        return adapter

    # -- rows --------------------------------------------------------------------------------------
    def request_body(self, spec: RowSpec, gen: GenerationArgs) -> dict:
        body = {
            "model": self.served_name(spec.adapter),
            "prompt": [int(t) for t in spec.prompt_ids],
            "max_tokens": int(spec.max_new_tokens or gen.max_new_tokens),
            "stream": True,
            "stream_options": {"include_usage": True},
            "stop_token_ids": [] if spec.ignore_eos else self.stop_token_ids,
            "ignore_eos": spec.ignore_eos,
            "return_token_ids": True,
            "skip_special_tokens": True,
            "repetition_penalty": gen.repetition_penalty,
        }
        if spec.stop:
            body["stop"] = list(spec.stop)
        if gen.do_sample:
            body.update(temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k)  # top_k 0: no limit
        else:
            body["temperature"] = 0.0  # greedy
        if gen.seed is not None:
            body["seed"] = gen.seed
        return body

    def submit(self, spec: RowSpec, gen: GenerationArgs) -> RowHandle:
        """Start one row; its text streams into the returned handle from a background thread."""
        if spec.constraint is not None:
            raise WorkbenchError(FORCED_TOOL_CALL)
        if self._closed:
            raise WorkbenchError("the vllm engine was closed; start it again")
        if self.process.poll() is not None:
            raise self._exited_error("earlier")
        body = self.request_body(spec, gen)  # an unknown adapter fails here, before anything starts
        handle = RowHandle(spec)
        thread = threading.Thread(target=self._run_row, args=(handle, body), daemon=True, name="workbench-vllm-row")
        handle._thread = thread
        thread.start()
        return handle

    def _run_row(self, handle: RowHandle, body: dict) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=None)
        stream = _Stream(handle, None)
        try:
            conn.connect()
            stream.sock = conn.sock
            with self._lock:
                self._streams.add(stream)
                self._lock.notify_all()
            if handle.cancelled:
                handle._finish("cancelled")
                return
            self._stream_row(handle, conn, body)
        except BaseException as exc:  # noqa: BLE001 - every failure ends the row, never the thread silently
            if handle.cancelled or stream.closed:
                handle._finish("cancelled")
            else:
                if isinstance(exc, (OSError, http.client.HTTPException)):
                    exc = self._connection_error(exc)
                handle._finish(error=exc)
        finally:
            with self._lock:
                self._streams.discard(stream)
            conn.close()

    def _connection_error(self, exc: BaseException) -> WorkbenchError:
        if self.process.poll() is not None:
            return self._exited_error("while answering")
        return WorkbenchError(f"lost the connection to the vllm server at {self.base_url}: {exc}")

    def _stream_row(self, handle: RowHandle, conn: http.client.HTTPConnection, body: dict) -> None:
        conn.request("POST", "/v1/completions", body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json", "Accept": "text/event-stream"})
        response = conn.getresponse()
        if response.status != 200:
            message = _error_message(response.read())
            if response.status == 404 and body["model"] != BASE_SERVED_NAME:
                raise WorkbenchError(f"adapter {body['model']!r} is not served by the vllm server: {message}")
            if response.status == 400 and ("context length" in message or "max_model_len" in message):
                raise ContextLengthError(f"the prompt does not fit the vllm server's context: {message}")
            raise WorkbenchError(f"the vllm server refused the request (HTTP {response.status}): {message}")
        finish_reason = stop_reason = None
        while True:
            line = response.readline()
            if not line:
                break  # the stream ended (or was shut for a cancel)
            line = line.strip()
            if not line.startswith(b"data:"):
                continue  # blank separators, comments
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise WorkbenchError(f"the vllm server failed while answering: {_error_message(data)}")
            if chunk.get("usage"):
                handle.usage = chunk["usage"]  # prompt_tokens / completion_tokens as vLLM counted them
            for choice in chunk.get("choices") or []:
                text, ids = choice.get("text") or "", choice.get("token_ids") or []
                if (text or ids) and handle.first_token_at is None:
                    handle.first_token_at = time.perf_counter()
                handle.token_ids.extend(int(t) for t in ids)
                handle._emit(text)
                if choice.get("finish_reason"):
                    finish_reason, stop_reason = choice["finish_reason"], choice.get("stop_reason")
            if handle.cancelled:
                handle._finish("cancelled")
                return
        if handle.cancelled:
            handle._finish("cancelled")
        elif finish_reason in ("stop", "length"):
            if finish_reason == "stop" and isinstance(stop_reason, str):
                handle._stopped_by_string = True
            elif finish_reason == "stop" and handle.token_ids and handle.token_ids[-1] in {*self._end_ids, stop_reason}:
                # vLLM returns the end-of-turn token among the ids; RowHandle counts it itself (as the
                # transformers engine, which never stores it).
                handle.token_ids.pop()
            handle._finish(finish_reason)
        elif finish_reason is None:
            raise self._exited_error("in the middle of an answer") if self.process.poll() is not None else \
                WorkbenchError("the vllm server ended the answer without a finish reason")
        else:
            raise WorkbenchError(f"the vllm server ended the answer with finish_reason {finish_reason!r}")

    def _watch_cancels(self) -> None:
        """Shut the stream of every cancelled row: its reader may be blocked waiting for the next token."""
        while True:
            with self._lock:
                while not self._streams and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                cancelled = [s for s in self._streams if s.handle.cancelled and not s.closed]
            for stream in cancelled:
                stream.shut()
            time.sleep(0.05)

    # -- stop --------------------------------------------------------------------------------------
    def close(self, timeout: float = 30) -> None:
        """Cancel the rows still streaming and stop the server's whole process group (idempotent)."""
        with self._lock:
            already = self._closed
            self._closed = True
            streams = list(self._streams)
            self._lock.notify_all()
        for stream in streams:
            stream.handle.cancel()
            stream.shut()
        if already:
            return
        group = self.process.pid  # start_new_session: the server leads its own process group
        try:
            os.killpg(group, signal.SIGTERM)  # vLLM's engine core runs in child processes of the server
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(group, signal.SIGKILL)  # whatever did not stop in time, or outlived the server
        except ProcessLookupError:
            pass
        self.process.wait(10)
        if not self._keep_log:
            self.log_path.unlink(missing_ok=True)
