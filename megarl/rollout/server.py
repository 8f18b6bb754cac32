"""megarl's built-in rollout server: the subset of SGLang's HTTP protocol that megarl uses.

A real aiohttp server (127.0.0.1 by default) in front of `GenerationEngine`. HTTP handlers put
generation jobs on a queue; one worker thread drains the queue and runs the waiting sequences
as one batch of at most `max_batch_sequences` (concurrent requests are batched together; a
request with more sequences is split over several batches). Weight updates take the engine's
model lock, so no batch ever runs on half-updated weights.

One request cannot take the server down: each /generate request is validated on its own
before it joins a batch (prompt within the context length, finite in-range sampling values,
at most `max_request_sequences` sequences) and gets a 400 naming the problem; a prompt given as
text that is surely too long is refused before it is tokenized; if a batch still fails, its
requests are re-run one by one so only the bad one fails. A request whose client disconnects,
or that runs past `request_timeout_s`, leaves the batch at the next decode step. A batch of
several prompts in one request fails as a whole with a 400 naming the prompt, as SGLang's
non-streaming /generate does (SGLang has no partial-success response). `/health` answers 503
when the worker thread died or a batch made no progress for `stall_timeout_s`.

Endpoints (JSON shapes as SGLang 0.5.x: its routes in `sglang/srt/entrypoints/http_server.py`, request
classes in `sglang/srt/managers/io_struct.py`, sampling fields in `sglang/srt/sampling/sampling_params.py`):
  POST /generate                       text or input_ids (a list of lists is a batch), sampling_params,
                                       return_logprob, logprob_start_len, return_text_in_logprobs, rid
  POST /update_weights_from_disk       {model_path, weight_version?, flush_cache?, ...}
  POST /begin_weight_update            {selector?}  opens a weight-update session
  POST /update_weights_from_tensor     {serialized_named_tensors, load_format, weight_version?}
                                       only from loopback and with the server's token; inside a session
  POST /init_weights_update_group      {master_address, master_port, rank_offset, world_size, group_name, backend}
  POST /update_weights_from_distributed {names, dtypes, shapes, group_name, load_format?, weight_version?}
                                       inside a session
  POST /end_weight_update              {}  closes the session
  POST /destroy_weights_update_group   {group_name}
  POST /update_weight_version          {new_version, abort_all_requests?}
  GET|POST /flush_cache, POST /pause_generation {mode}, POST /continue_generation
  GET|POST /release_memory_occupation, /resume_memory_occupation (no-ops on CPU)
  GET /health, /health_generate, /model_info, /server_info

Weight-update session (SGLang 0.5.23's `SchedulerWeightUpdaterManager`, same messages, HTTP 400 with
`{"success": false, "message": ...}` as SGLang's HTTP server answers): `/update_weights_from_tensor` and
`/update_weights_from_distributed` are refused unless they run between `/begin_weight_update` and
`/end_weight_update`; a second begin, or an end without a begin, is refused. Disk updates need no
session (SGLang's disk loader restores and post-processes the weights itself).

Admin endpoints (weight updates and update groups, weight_version, pause/continue, flush,
memory) require `Authorization: Bearer <token>`; a server started without a token refuses them
all (403), and a server bound beyond loopback will not start without one. The token comes from
$MEGARL_SERVE_TOKEN or a 0600 file, never the command line (see docs/security.md). The tensor
endpoint reads SGLang's wire format through an allow-list unpickler (`weight_buckets.load_payload`)
and refuses any peer that is not 127.0.0.1/::1. /generate, /health and the info endpoints stay open.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import ipaddress
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field

import torch
from aiohttp import web

from megarl.rollout import routed_experts
from megarl.rollout.admin_token import TOKEN_ENV
from megarl.rollout.engine import CancelToken, GenerationEngine, SamplingParamsError, SequenceRequest, SequenceSampling
from megarl.rollout.update_group import DEFAULT_GROUP_NAME, UpdateGroup
from megarl.rollout.weight_buckets import layout_metadata, load_payload, unpack
from megarl.runtime.device import is_gpu_device, synchronize

log = logging.getLogger("megarl.rollout.server")

LOOPBACK_PEERS = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
DEFAULT_REQUEST_TIMEOUT_S = 600.0  # the rollout client's own default: past it nobody waits for the answer
DEFAULT_MAX_REQUEST_SEQUENCES = 4096  # prompts x n in one /generate request
DEFAULT_STALL_TIMEOUT_S = 300.0  # a batch with no decode step for this long marks the server unhealthy
HEALTH_GENERATE_TIMEOUT_S = 20.0  # SGLang's /health_generate limit
# A batch starts this long after its first request arrived (or when full): the requests a client sends
# together (one per prompt) run as one batch instead of the first alone and the rest after it, each
# batch decoding to its own longest row (static batching).
BATCH_WINDOW_S = 0.01
DISCONNECT_POLL_S = 0.25  # how often a waiting /generate handler checks that its client is still there


# SGLang 0.5.23's weight-update session messages (managers/scheduler_components/weight_updater.py)
SESSION_REQUIRED = "{endpoint} must run between begin_weight_update() and end_weight_update()"
SESSION_ALREADY_OPEN = "a weight-update session is already open; call end_weight_update() first"
SESSION_NOT_OPEN = "no weight-update session is open; call begin_weight_update() first"
SESSION_SELECTORS = ("target", "draft", "all")  # SGLang's BeginWeightUpdateReqInput.selector


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class _Job:
    """One /generate request's sequences on their way through the worker (maybe over several batches)."""

    sequences: list[SequenceRequest]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    cancel: CancelToken = field(default_factory=CancelToken)
    results: list = field(default_factory=list)
    done: int = 0  # sequences generated so far
    failed: bool = False

    def __post_init__(self) -> None:
        self.results = [None] * len(self.sequences)
        for sequence in self.sequences:
            sequence.cancel = self.cancel


class RolloutServer:
    """The HTTP app plus its generation worker thread."""

    def __init__(self, engine: GenerationEngine, *, token: str | None = None, max_batch_sequences: int = 64,
                 served_model_name: str | None = None, request_timeout_s: float | None = DEFAULT_REQUEST_TIMEOUT_S,
                 max_request_sequences: int = DEFAULT_MAX_REQUEST_SEQUENCES,
                 stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S, batch_window_s: float = BATCH_WINDOW_S):
        if max_batch_sequences < 1 or max_request_sequences < 1:
            raise ValueError(f"max_batch_sequences={max_batch_sequences} and max_request_sequences={max_request_sequences} must be >= 1")
        self.engine = engine
        self.token = token
        self.max_batch_sequences = max_batch_sequences
        self.request_timeout_s = request_timeout_s
        self.max_request_sequences = max_request_sequences
        self.stall_timeout_s = stall_timeout_s
        self.batch_window_s = batch_window_s
        self.last_progress = time.monotonic()  # the worker's last decode step or batch start/end
        self.served_model_name = served_model_name or engine.model_path
        self.jobs: queue.Queue[_Job | None] = queue.Queue()
        self.state = threading.Condition()
        self.paused = False
        self.abort_running = False
        self.running_batch = False
        self.batches_run = 0
        self.holding = 0  # a dequeued job waiting for /continue_generation
        self.batch_sizes: list[int] = []  # sequences per batch, most recent last (bounded)
        self.update_groups: dict[str, UpdateGroup] = {}
        self.session_selector: str | None = None  # the open weight-update session's selector (None: no session)
        # Kept between the buckets of one update and dropped by /continue_generation: the mappings of
        # the sender's most recent shared-memory buckets (a sender that reuses its buffers then costs
        # no new mapping and no page faults per bucket) and the distributed transport's receive buffer.
        self.update_lock = threading.Lock()
        self.held_buckets: collections.deque = collections.deque(maxlen=4)
        self.receive_buffer: torch.Tensor | None = None
        self.worker = threading.Thread(target=self._worker_loop, name="megarl-generation", daemon=True)
        self.stopping = False
        self.app = self._build_app()

    # ---- worker ------------------------------------------------------------------------
    def start_worker(self) -> None:
        self.worker.start()

    def stop_worker(self) -> None:
        self.stopping = True
        with self.state:
            self.paused = False
            self.state.notify_all()
        self.jobs.put(None)

    def _worker_loop(self) -> None:
        backlog: collections.deque[tuple[_Job, int]] = collections.deque()  # (job, its first sequence not yet run)
        while not self.stopping:
            if not backlog:
                first = self.jobs.get()
                if first is None:
                    return
                backlog.append((first, 0))
                self._collect(backlog)
            with self.state:
                self.holding = len(backlog)
                while self.paused and not self.stopping:
                    self.state.wait()
                self.holding = 0
                self.running_batch = True
                self.last_progress = time.monotonic()
            try:
                while sum(len(job.sequences) - start for job, start in backlog) < self.max_batch_sequences:
                    try:
                        job = self.jobs.get_nowait()
                    except queue.Empty:
                        break
                    if job is None:
                        self.stopping = True
                        break
                    backlog.append((job, 0))
                parts = self._take_batch(backlog)
                if parts:
                    self._run_batch(parts)
            finally:
                with self.state:
                    self.running_batch = False
                    self.last_progress = time.monotonic()
                    self.state.notify_all()

    def _collect(self, backlog: collections.deque) -> None:
        """Wait up to batch_window_s for more requests to join a new batch (until it would be full)."""
        deadline = time.monotonic() + self.batch_window_s
        while sum(len(job.sequences) - start for job, start in backlog) < self.max_batch_sequences:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                job = self.jobs.get(timeout=left)
            except queue.Empty:
                return
            if job is None:
                self.jobs.put(None)  # stop: seen by the loop
                return
            backlog.append((job, 0))

    def _take_batch(self, backlog: collections.deque) -> list[tuple[_Job, int, int]]:
        """Up to max_batch_sequences sequences from the front of the backlog, as (job, start, end)
        slices; jobs cancelled or failed while they waited are dropped."""
        parts: list[tuple[_Job, int, int]] = []
        count = 0
        while backlog and count < self.max_batch_sequences:
            job, start = backlog.popleft()
            if job.failed:
                continue
            reason = job.cancel.check()
            if reason is not None:  # cancelled while it waited: its unrun sequences end as aborted
                for index in range(start, len(job.sequences)):
                    job.results[index] = self.engine.aborted_result(job.sequences[index], reason)
                job.loop.call_soon_threadsafe(_set_result, job.future, job.results)
                continue
            end = min(len(job.sequences), start + self.max_batch_sequences - count)
            parts.append((job, start, end))
            count += end - start
            if end < len(job.sequences):
                backlog.appendleft((job, end))
        return parts

    def _run_batch(self, parts: list[tuple[_Job, int, int]]) -> None:
        """Generate the sequences of `parts` as one batch; if the batch fails, run each part alone."""
        sequences = [s for job, start, end in parts for s in job.sequences[start:end]]
        try:
            results = self.engine.generate(sequences, should_abort=self._decode_step)
        except Exception as err:  # noqa: BLE001 - a failure belongs to the request(s) that caused it
            if len(parts) > 1:
                log.warning("a batch of %d requests failed (%s: %s); running them one by one", len(parts), type(err).__name__, err)
                for part in parts:
                    self._run_batch([part])
                return
            job = parts[0][0]
            log.exception("generation failed for one request")
            job.failed = True
            job.loop.call_soon_threadsafe(_set_exception, job.future, err)
            return
        self.batches_run += 1
        self.batch_sizes = (self.batch_sizes + [len(sequences)])[-100:]
        offset = 0
        for job, start, end in parts:
            job.results[start:end] = results[offset:offset + end - start]
            offset += end - start
            job.done += end - start
            if job.done == len(job.sequences):
                job.loop.call_soon_threadsafe(_set_result, job.future, job.results)

    def _decode_step(self) -> bool:
        """Polled by the engine between decode steps: records progress, says whether to abort."""
        self.last_progress = time.monotonic()
        return self.abort_running

    def stalled_for(self) -> float:
        """Seconds the running batch has gone without a decode step (0 when idle)."""
        return time.monotonic() - self.last_progress if self.running_batch else 0.0

    def _pause(self, mode: str) -> None:
        """Stop starting batches; with mode 'abort' also cut the running batch short. Blocks until idle."""
        if mode not in ("abort", "in_place", "retract"):
            raise HTTPError(400, f"pause_generation mode {mode!r} is unknown; use 'abort', 'in_place' or 'retract'")
        with self.state:
            self.paused = True
            self.abort_running = mode == "abort"
            while self.running_batch:
                self.state.wait()
            self.abort_running = False

    def _continue(self) -> None:
        with self.update_lock:  # the update is over: let go of the sender's buffers and the receive buffer
            self.held_buckets.clear()
            self.receive_buffer = None
        with self.state:
            self.paused = False
            self.state.notify_all()

    def _receive_buffer(self, nbytes: int, device: torch.device) -> torch.Tensor:
        """A uint8 buffer of `nbytes` for a broadcast bucket, reused until /continue_generation."""
        buffer = self.receive_buffer
        if buffer is None or buffer.numel() < nbytes or buffer.device != device:
            buffer = self.receive_buffer = None  # free the old one before making a larger one
            buffer = self.receive_buffer = torch.empty(nbytes, dtype=torch.uint8, device=device)
        return buffer[:nbytes]

    # ---- HTTP plumbing -----------------------------------------------------------------
    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 30)
        routes = [
            ("POST", "/generate", self.handle_generate),
            ("GET", "/health", self.handle_health),
            ("GET", "/health_generate", self.handle_health_generate),
            ("GET", "/model_info", self.handle_model_info),
            ("GET", "/get_model_info", self.handle_model_info),
            ("GET", "/server_info", self.handle_server_info),
            ("POST", "/update_weights_from_disk", self.handle_update_from_disk),
            ("POST", "/begin_weight_update", self.handle_begin_update),
            ("POST", "/end_weight_update", self.handle_end_update),
            ("POST", "/update_weights_from_tensor", self.handle_update_from_tensor),
            ("POST", "/init_weights_update_group", self.handle_init_group),
            ("POST", "/destroy_weights_update_group", self.handle_destroy_group),
            ("POST", "/update_weights_from_distributed", self.handle_update_from_distributed),
            ("POST", "/update_weight_version", self.handle_update_weight_version),
            ("GET", "/flush_cache", self.handle_flush_cache),
            ("POST", "/flush_cache", self.handle_flush_cache),
            ("POST", "/pause_generation", self.handle_pause),
            ("POST", "/continue_generation", self.handle_continue),
            ("GET", "/release_memory_occupation", self.handle_release_memory),
            ("POST", "/release_memory_occupation", self.handle_release_memory),
            ("GET", "/resume_memory_occupation", self.handle_resume_memory),
            ("POST", "/resume_memory_occupation", self.handle_resume_memory),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, self._wrap(handler))
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_startup(self, _app) -> None:
        self.start_worker()

    async def _on_shutdown(self, _app) -> None:
        self.stop_worker()

    def _wrap(self, handler):
        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except HTTPError as err:
                return web.json_response({"success": False, "message": err.message,
                                          "error": {"message": err.message, "code": err.status}}, status=err.status)
            except (SamplingParamsError, ValueError, KeyError, TypeError, FileNotFoundError) as err:
                message = f"{type(err).__name__}: {err}"
                return web.json_response({"success": False, "message": message,
                                          "error": {"message": message, "code": 400}}, status=400)
        return wrapped

    @staticmethod
    async def _json(request: web.Request, *, optional: bool = False) -> dict:
        if optional and not request.can_read_body:
            return {}
        try:
            body = await request.json()
        except Exception as err:  # noqa: BLE001 - any parse failure is the client's fault
            raise HTTPError(400, f"request body is not valid JSON: {err}") from None
        if body is None and optional:
            return {}
        if not isinstance(body, dict):
            raise HTTPError(400, "request body must be a JSON object")
        return body

    def _check_token(self, request: web.Request) -> None:
        """Admin endpoints: the server's token or nothing (disabled when the server has none)."""
        if self.token is None:
            raise HTTPError(403, f"{request.path} is disabled: this server has no admin token; start it with "
                                 f"${TOKEN_ENV} or --token-file FILE and send 'Authorization: Bearer <token>'")
        header = request.headers.get("Authorization", "")
        given = header[len("Bearer "):] if header.startswith("Bearer ") else ""
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            raise HTTPError(401, "missing or wrong token: send 'Authorization: Bearer <token the server was started with>'")

    def _check_loopback(self, request: web.Request) -> None:
        if request.remote not in LOOPBACK_PEERS:
            raise HTTPError(403, f"/update_weights_from_tensor accepts shared-memory handles only from 127.0.0.1; "
                                 f"peer {request.remote} must use /update_weights_from_distributed or _disk")

    @staticmethod
    async def _in_thread(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    # ---- generation ----------------------------------------------------------------------
    async def handle_generate(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        body = await self._json(request)
        if body.get("stream"):
            raise HTTPError(400, "stream=true is not supported by the built-in server; send stream=false")
        prompts, single = await self._prompts(body)
        per_prompt = lambda key, default: _per_prompt(body.get(key, default), len(prompts), key)  # noqa: E731
        sampling_list = per_prompt("sampling_params", None)
        return_logprob = per_prompt("return_logprob", False)
        start_lens = per_prompt("logprob_start_len", -1)
        return_routes = per_prompt("return_routed_experts", False)
        routes_start = per_prompt("routed_experts_start_len", 0)
        rids = per_prompt("rid", None)
        text_in_logprobs = bool(body.get("return_text_in_logprobs", False))
        samplings = []
        for i, prompt in enumerate(prompts):
            try:
                sampling = SequenceSampling.from_request(sampling_list[i])
                self.engine.validate_request(prompt, sampling)
            except SamplingParamsError as err:
                raise HTTPError(400, str(err) if single else f"prompt {i} of {len(prompts)}: {err}") from None
            samplings.append(sampling)
        total = sum(sampling.n for sampling in samplings)
        if total > self.max_request_sequences:
            raise HTTPError(400, f"this request asks for {total} sequences (prompts x n) but the server's limit is "
                                 f"max_request_sequences={self.max_request_sequences}; send fewer prompts or a smaller n per request")
        sequences, owners = [], []
        for i, (prompt, sampling) in enumerate(zip(prompts, samplings)):
            start_len = start_lens[i] if start_lens[i] is not None else -1
            for j in range(sampling.n):
                sequences.append(SequenceRequest(input_ids=prompt, sampling=sampling, sample_index=j,
                                                 return_logprob=bool(return_logprob[i]), logprob_start_len=int(start_len),
                                                 return_routed_experts=bool(return_routes[i])))
                owners.append((i, j))
        loop = asyncio.get_running_loop()
        cancel = CancelToken()
        if self.request_timeout_s:
            cancel = CancelToken(time.monotonic() + self.request_timeout_s,
                                 f"the request ran past the server's limit of {self.request_timeout_s:g} s per request")
        job = _Job(sequences=sequences, loop=loop, future=loop.create_future(), cancel=cancel)
        self.jobs.put(job)
        results = await self._await_job(job, request)
        latency = time.perf_counter() - started
        responses = []
        base_rids = [rid if rid is not None else uuid.uuid4().hex for rid in rids]
        for (i, j), seq, res in zip(owners, sequences, results):
            base_rid = base_rids[i]
            meta = {
                "id": base_rid if seq.sampling.n == 1 else f"{base_rid}-{j}",
                "finish_reason": res.finish_reason,
                "prompt_tokens": res.prompt_tokens,
                "completion_tokens": len(res.output_ids),
                "cached_tokens": 0,
                "weight_version": res.weight_version,
                "e2e_latency": latency,
            }
            if seq.return_logprob:
                text_of = (lambda t: self.engine.token_text(t)) if text_in_logprobs else (lambda t: None)
                meta["output_token_logprobs"] = [[lp, t, text_of(t)] for lp, t in zip(res.output_logprobs, res.output_ids)]
                if res.input_logprobs is not None:
                    start = len(seq.input_ids) - len(res.input_logprobs)
                    meta["input_token_logprobs"] = [[lp, t, text_of(t)] for lp, t in
                                                    zip(res.input_logprobs, seq.input_ids[start:])]
                else:
                    meta["input_token_logprobs"] = []
            if res.routed_experts is not None:  # SGLang's format: rows [routed_experts_start_len, seqlen - 1)
                meta["routed_experts"] = routed_experts.encode(res.routed_experts[int(routes_start[i] or 0):].numpy())
            responses.append({"text": res.text, "output_ids": res.output_ids, "meta_info": meta, "index": len(responses)})
        if single and len(responses) == 1:
            return web.json_response(responses[0])
        return web.json_response(responses)

    async def _await_job(self, job: _Job, request: web.Request) -> list:
        """The job's results; cancels the job when the client goes away while it waits."""
        try:
            while True:
                try:
                    return await asyncio.wait_for(asyncio.shield(job.future), timeout=DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    if request.transport is None or request.transport.is_closing():
                        job.cancel.cancel("the client disconnected")
                        raise HTTPError(499, "the client disconnected") from None
        except asyncio.CancelledError:
            job.cancel.cancel("the client disconnected")
            raise
        except (HTTPError, SamplingParamsError):
            raise
        except Exception as err:  # noqa: BLE001 - the worker's failure of this request alone
            raise HTTPError(500, f"generation failed: {type(err).__name__}: {err}") from None

    async def _prompts(self, body: dict) -> tuple[list[list[int]], bool]:
        """(token-id prompts, whether the request was a single prompt)."""
        if body.get("input_ids") is not None and body.get("text") is not None:
            raise HTTPError(400, "send either text or input_ids, not both")
        if body.get("input_ids") is not None:
            ids = body["input_ids"]
            if not isinstance(ids, list) or not ids:
                raise HTTPError(400, "input_ids must be a non-empty list of token ids or a list of such lists")
            if all(isinstance(p, list) for p in ids):
                return ids, False
            return [ids], True
        if body.get("text") is not None:
            text = body["text"]
            if isinstance(text, str):
                return [await self._in_thread(self.engine.encode, text)], True  # tokenizing never blocks other requests
            if isinstance(text, list) and all(isinstance(t, str) for t in text):
                prompts = []
                for i, one in enumerate(text):
                    try:
                        prompts.append(await self._in_thread(self.engine.encode, one))
                    except SamplingParamsError as err:
                        raise HTTPError(400, f"prompt {i} of {len(text)}: {err}") from None
                return prompts, False
            raise HTTPError(400, "text must be a string or a list of strings")
        raise HTTPError(400, "a /generate request needs text or input_ids")

    def _unhealthy(self) -> str | None:
        if not self.worker.is_alive():
            return "generation worker is not running"
        stalled = self.stalled_for()
        if stalled > self.stall_timeout_s:
            return (f"generation worker has made no progress for {stalled:.0f} s (limit stall_timeout_s="
                    f"{self.stall_timeout_s:g}); a batch is stuck: restart the server")
        return None

    async def handle_health(self, request: web.Request) -> web.Response:
        problem = self._unhealthy()
        return web.Response(status=503, text=problem) if problem else web.Response(status=200)

    async def handle_health_generate(self, request: web.Request) -> web.Response:
        problem = self._unhealthy()
        if problem:
            return web.Response(status=503, text=problem)
        loop = asyncio.get_running_loop()
        probe = SequenceRequest(input_ids=[0], sampling=SequenceSampling(max_new_tokens=1, temperature=0.0))
        job = _Job(sequences=[probe], loop=loop, future=loop.create_future())
        self.jobs.put(job)
        try:
            await asyncio.wait_for(asyncio.shield(job.future), timeout=HEALTH_GENERATE_TIMEOUT_S)
        except asyncio.TimeoutError:
            job.cancel.cancel("health probe timed out")
            return web.Response(status=503, text=f"no one-token generation within {HEALTH_GENERATE_TIMEOUT_S:g} s")
        return web.Response(status=200)

    async def handle_model_info(self, request: web.Request) -> web.Response:
        config = self.engine.model.config
        return web.json_response({
            "model_path": self.engine.model_path,
            "served_model_name": self.served_model_name,
            "tokenizer_path": self.engine.model_path if self.engine.tokenizer is not None else None,
            "is_generation": True,
            "preferred_sampling_params": None,
            "weight_version": self.engine.weight_version,
            "load_format": "auto",
            "model_type": getattr(config, "model_type", None),
            "architectures": getattr(config, "architectures", None),
            "has_image_understanding": False,
            "has_audio_understanding": False,
        })

    async def handle_server_info(self, request: web.Request) -> web.Response:
        return web.json_response({
            "model_path": self.engine.model_path, "tp_size": 1, "dp_size": 1,
            "weight_version": self.engine.weight_version, "device": str(self.engine.device),
            "max_batch_sequences": self.max_batch_sequences, "server": "megarl-builtin",
            "paused": self.paused, "queued_requests": self.jobs.qsize() + self.holding, "running_batch": self.running_batch,
            "batches_run": self.batches_run, "recent_batch_sequences": self.batch_sizes[-10:],
        })

    # ---- control -----------------------------------------------------------------------
    async def handle_flush_cache(self, request: web.Request) -> web.Response:
        self._check_token(request)
        # No prefix cache survives between batches here, so there is nothing to drop.
        return web.Response(text="Cache flushed.\n")

    async def handle_pause(self, request: web.Request) -> web.Response:
        self._check_token(request)
        body = await self._json(request, optional=True)
        await self._in_thread(self._pause, body.get("mode", "abort"))
        return web.json_response({"message": "Generation paused successfully.", "status": "ok"})

    async def handle_continue(self, request: web.Request) -> web.Response:
        self._check_token(request)
        self._continue()
        return web.json_response({"message": "Generation continued successfully.", "status": "ok"})

    async def handle_release_memory(self, request: web.Request) -> web.Response:
        self._check_token(request)
        await self._json(request, optional=True)
        return web.json_response({"success": True, "message": "no-op: the built-in server keeps its CPU memory"})

    async def handle_resume_memory(self, request: web.Request) -> web.Response:
        self._check_token(request)
        await self._json(request, optional=True)
        return web.json_response({"success": True, "message": "no-op: the built-in server keeps its CPU memory"})

    async def handle_update_weight_version(self, request: web.Request) -> web.Response:
        self._check_token(request)
        body = await self._json(request)
        if "new_version" not in body:
            raise HTTPError(400, "update_weight_version needs new_version")
        with self.engine.model_lock:
            self.engine.weight_version = str(body["new_version"])
        return web.json_response({"success": True, "message": f"Weight version updated to {body['new_version']}",
                                  "new_version": body["new_version"]})

    # ---- weight updates ------------------------------------------------------------------
    @staticmethod
    def _refused(message: str) -> web.Response:
        """What SGLang's HTTP server answers when its weight updater refuses a call."""
        return web.json_response({"success": False, "message": message}, status=400)

    async def handle_begin_update(self, request: web.Request) -> web.Response:
        self._check_token(request)
        body = await self._json(request, optional=True)
        selector = body.get("selector", "all")
        if selector not in SESSION_SELECTORS:
            raise HTTPError(400, f"selector {selector!r} is unknown; use one of {SESSION_SELECTORS}")
        if self.session_selector is not None:  # handlers run on the event loop's thread: no lock needed
            return self._refused(SESSION_ALREADY_OPEN)
        self.session_selector = selector
        return web.json_response({"success": True, "message": "Success"})

    async def handle_end_update(self, request: web.Request) -> web.Response:
        self._check_token(request)
        await self._json(request, optional=True)
        if self.session_selector is None:
            return self._refused(SESSION_NOT_OPEN)
        self.session_selector = None
        return web.json_response({"success": True, "message": "Success"})

    def _session_refusal(self, endpoint: str) -> web.Response | None:
        if self.session_selector is None:
            return self._refused(SESSION_REQUIRED.format(endpoint=endpoint))
        return None

    def _finish_update(self, count: int, body: dict, how: str) -> web.Response:
        if body.get("weight_version") is not None:
            with self.engine.model_lock:
                self.engine.weight_version = str(body["weight_version"])
        return web.json_response({"success": True, "message": f"Succeeded to update {count} tensors {how}.",
                                  "num_paused_requests": 0})

    async def handle_update_from_disk(self, request: web.Request) -> web.Response:
        self._check_token(request)
        body = await self._json(request)
        if not body.get("model_path"):
            raise HTTPError(400, "update_weights_from_disk needs model_path (a directory of *.safetensors files)")
        count = await self._in_thread(self.engine.load_weights_from_disk, body["model_path"])
        return self._finish_update(count, body, "from disk")

    async def handle_update_from_tensor(self, request: web.Request) -> web.Response:
        self._check_loopback(request)
        self._check_token(request)
        body = await self._json(request)
        refused = self._session_refusal("update_weights_from_tensor")
        if refused is not None:
            return refused
        payloads = body.get("serialized_named_tensors")
        if not isinstance(payloads, list) or not payloads or not all(isinstance(p, str) for p in payloads):
            raise HTTPError(400, "serialized_named_tensors must be a list with one base64 payload per server TP rank")
        if len(payloads) != 1:
            raise HTTPError(400, f"serialized_named_tensors has {len(payloads)} entries but the built-in server has "
                                 "tp_size 1: send one payload (server_tp_size=1)")
        load_format = body.get("load_format")
        if load_format not in (None, "direct", "flattened_bucket"):
            raise HTTPError(400, f"load_format {load_format!r} is not supported; use null, 'direct' or 'flattened_bucket'")

        def load() -> int:
            with self.update_lock:
                data = load_payload(payloads[0])  # SGLang's wire format: shared-memory / CUDA-IPC handles
                if load_format == "flattened_bucket":
                    if not isinstance(data, dict) or "flattened_tensor" not in data or "metadata" not in data:
                        raise ValueError("a flattened_bucket payload must be {'flattened_tensor': uint8 tensor, 'metadata': [...]}")
                    named = unpack(data["flattened_tensor"], data["metadata"])
                    # Keep the mapping (not the bytes: the copy below is done before we answer) so the
                    # sender's next bucket in the same buffer maps for free; dropped by /continue_generation.
                    if data["flattened_tensor"].device.type == "cpu":
                        self.held_buckets.append(data["flattened_tensor"])
                else:
                    named = list(data)
                return self.engine.load_weights(named)

        count = await self._in_thread(load)
        return self._finish_update(count, body, "from tensor")

    async def handle_init_group(self, request: web.Request) -> web.Response:
        self._check_token(request)
        body = await self._json(request)
        missing = [k for k in ("master_address", "master_port", "rank_offset", "world_size") if k not in body]
        if missing:
            raise HTTPError(400, f"init_weights_update_group is missing {missing}")
        name = body.get("group_name", DEFAULT_GROUP_NAME)
        if name in self.update_groups:
            raise HTTPError(400, f"weight update group {name!r} already exists; destroy it first")
        backend = body.get("backend", "gloo")
        group = await self._in_thread(lambda: UpdateGroup(
            backend=backend, master_address=body["master_address"], master_port=int(body["master_port"]),
            rank=int(body["rank_offset"]), world_size=int(body["world_size"]), group_name=name,
            timeout_s=float(body.get("timeout_s", 120.0))))
        self.update_groups[name] = group
        return web.json_response({"success": True, "message": f"Succeeded to initialize group {name!r} ({backend})."})

    async def handle_destroy_group(self, request: web.Request) -> web.Response:
        self._check_token(request)
        body = await self._json(request, optional=True)
        name = body.get("group_name", DEFAULT_GROUP_NAME)
        group = self.update_groups.pop(name, None)
        if group is None:
            raise HTTPError(400, f"no weight update group named {name!r}")
        group.close()
        return web.json_response({"success": True, "message": f"Succeeded to destroy group {name!r}."})

    async def handle_update_from_distributed(self, request: web.Request) -> web.Response:
        self._check_token(request)
        body = await self._json(request)
        refused = self._session_refusal("update_weights_from_distributed")
        if refused is not None:
            return refused
        name = body.get("group_name", DEFAULT_GROUP_NAME)
        group = self.update_groups.get(name)
        if group is None:
            raise HTTPError(400, f"weight update group {name!r} does not exist; call /init_weights_update_group first")
        names, dtypes, shapes = body.get("names"), body.get("dtypes"), body.get("shapes")
        if not isinstance(names, list) or not names:
            raise HTTPError(400, "update_weights_from_distributed needs non-empty names, dtypes and shapes lists")
        metadata = layout_metadata(names, dtypes, shapes)

        def receive() -> int:
            with self.update_lock:
                if body.get("load_format") == "flattened_bucket":
                    buffer = self._receive_buffer(metadata[-1].end_idx, group.device)
                    group.broadcast(buffer)
                    named = unpack(buffer, metadata)
                else:
                    named = []
                    for meta in metadata:
                        tensor = torch.empty(meta.shape, dtype=meta.dtype, device=group.device)
                        group.broadcast(tensor)
                        named.append((meta.name, tensor))
                count = self.engine.load_weights(named)
                if is_gpu_device(group.device):
                    synchronize()  # the copy out of the receive buffer is done before it is reused
                return count

        count = await self._in_thread(receive)
        return self._finish_update(count, body, "from distributed")


def _set_result(future: asyncio.Future, value) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, err: BaseException) -> None:
    if not future.done():
        future.set_exception(err)


def _per_prompt(value, count: int, key: str) -> list:
    """Broadcast a scalar field to every prompt, or check a per-prompt list's length."""
    if isinstance(value, list):
        if len(value) != count:
            raise HTTPError(400, f"{key} has {len(value)} entries for {count} prompts; send one per prompt or a single value")
        return value
    return [value] * count


def is_loopback_host(host: str) -> bool:
    """Whether binding `host` listens on loopback only (127.0.0.0/8, ::1, or a name resolving only there)."""
    import socket

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without an admin token (one line naming the fix)."""
    if not token and not is_loopback_host(host):
        raise ValueError(f"refusing to listen on {host!r} without an admin token: anyone who can reach it could load "
                         f"weights or pause it; set ${TOKEN_ENV} (or --token-file FILE with mode 0600), or bind 127.0.0.1")


async def serve(engine: GenerationEngine, *, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
                max_batch_sequences: int = 64, ready=None, **limits) -> None:
    """Run the server until cancelled; `ready(port)` is called once it listens. `limits`:
    request_timeout_s, max_request_sequences, stall_timeout_s (see RolloutServer)."""
    check_bind(host, token)
    server = RolloutServer(engine, token=token, max_batch_sequences=max_batch_sequences, **limits)
    runner = web.AppRunner(server.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_port = site._server.sockets[0].getsockname()[1]  # the real port when port=0
    if ready is not None:
        ready(bound_port)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
