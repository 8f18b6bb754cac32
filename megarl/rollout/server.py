"""megarl's built-in rollout server: the subset of SGLang's HTTP protocol that megarl uses.

A real aiohttp server (127.0.0.1 by default) in front of `GenerationEngine`, in three parts:
- this module, the HTTP app: routes, JSON in and out, the admin token and the peer checks;
- `megarl.rollout.scheduler`: the worker thread that batches the waiting /generate jobs (at most
  `max_batch_sequences` sequences per batch; concurrent requests are batched together);
- `megarl.rollout.weight_receiver`: weight updates (disk, tensor, distributed) and their session.
  Updates take the engine's model lock, so no batch ever runs on half-updated weights.

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
import hmac
import ipaddress
import time
import uuid

from aiohttp import web

from megarl.rollout import routed_experts
from megarl.rollout.admin_token import TOKEN_ENV
from megarl.rollout.engine import CancelToken, GenerationEngine, SequenceRequest, SequenceResult
from megarl.rollout.protocol import (MAX_BATCH_SEQUENCES, REQUEST_TIMEOUT_S, RequestError, SamplingParams,
                                     SamplingParamsError)
from megarl.rollout.scheduler import BATCH_WINDOW_S, Job, Scheduler
from megarl.rollout.update_group import DEFAULT_GROUP_NAME
from megarl.rollout.weight_receiver import SessionRefused, WeightReceiver

LOOPBACK_PEERS = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
DEFAULT_MAX_REQUEST_SEQUENCES = 4096  # prompts x n in one /generate request
DEFAULT_STALL_TIMEOUT_S = 300.0  # a batch with no decode step for this long marks the server unhealthy
HEALTH_GENERATE_TIMEOUT_S = 20.0  # SGLang's /health_generate limit
DISCONNECT_POLL_S = 0.25  # how often a waiting /generate handler checks that its client is still there


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class RolloutServer:
    """The HTTP app in front of a scheduler (generation) and a weight receiver (updates) for one engine."""

    def __init__(self, engine: GenerationEngine, *, token: str | None = None, max_batch_sequences: int = MAX_BATCH_SEQUENCES,
                 served_model_name: str | None = None, request_timeout_s: float | None = REQUEST_TIMEOUT_S,
                 max_request_sequences: int = DEFAULT_MAX_REQUEST_SEQUENCES,
                 stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S, batch_window_s: float = BATCH_WINDOW_S):
        if max_request_sequences < 1:
            raise ValueError(f"max_request_sequences={max_request_sequences} must be >= 1")
        self.engine = engine
        self.token = token
        self.scheduler = Scheduler(engine, max_batch_sequences=max_batch_sequences, batch_window_s=batch_window_s)
        self.weights = WeightReceiver(engine)
        self.request_timeout_s = request_timeout_s
        self.max_request_sequences = max_request_sequences
        self.stall_timeout_s = stall_timeout_s
        self.served_model_name = served_model_name or engine.model_path
        self.app = self._build_app()

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
        self.scheduler.start()

    async def _on_shutdown(self, _app) -> None:
        self.scheduler.stop()

    def _wrap(self, handler):
        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except (HTTPError, RequestError) as err:
                status, message = (err.status, err.message) if isinstance(err, HTTPError) else (400, str(err))
                return web.json_response({"success": False, "message": message,
                                          "error": {"message": message, "code": status}}, status=status)
            except SessionRefused as err:  # what SGLang's HTTP server answers when its weight updater refuses a call
                return web.json_response({"success": False, "message": str(err)}, status=400)
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
                sampling = SamplingParams.from_request(sampling_list[i])
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
        job = Job(sequences=sequences, loop=loop, future=loop.create_future(), cancel=cancel)
        self.scheduler.submit(job)
        results = await self._await_job(job, request)
        latency = time.perf_counter() - started
        base_rids = [rid if rid is not None else uuid.uuid4().hex for rid in rids]
        responses = []
        for (i, j), seq, res in zip(owners, sequences, results):
            meta = self._meta_info(seq, res, base_rids[i] if seq.sampling.n == 1 else f"{base_rids[i]}-{j}",
                                   latency, text_in_logprobs, int(routes_start[i] or 0))
            responses.append({"text": res.text, "output_ids": res.output_ids, "meta_info": meta, "index": len(responses)})
        if single and len(responses) == 1:
            return web.json_response(responses[0])
        return web.json_response(responses)

    def _meta_info(self, seq: SequenceRequest, res: SequenceResult, rid: str, latency: float,
                   text_in_logprobs: bool, routes_start: int = 0) -> dict:
        """SGLang's `meta_info` of one generated sequence (per-token outputs as SGLang's [value, token, text] rows)."""
        meta = {
            "id": rid,
            "finish_reason": res.finish_reason,
            "prompt_tokens": res.prompt_tokens,
            "completion_tokens": len(res.output_ids),
            "cached_tokens": 0,
            "weight_version": res.weight_version,
            "e2e_latency": latency,
        }
        if seq.return_logprob:
            text_of = self.engine.token_text if text_in_logprobs else (lambda t: None)
            meta["output_token_logprobs"] = [[lp, t, text_of(t)] for lp, t in zip(res.output_logprobs, res.output_ids)]
            meta["input_token_logprobs"] = []
            if res.input_logprobs is not None:
                start = len(seq.input_ids) - len(res.input_logprobs)
                meta["input_token_logprobs"] = [[lp, t, text_of(t)] for lp, t in zip(res.input_logprobs, seq.input_ids[start:])]
        if res.routed_experts is not None:  # SGLang's format: rows [routed_experts_start_len, seqlen - 1)
            meta["routed_experts"] = routed_experts.encode(res.routed_experts[routes_start:].numpy())
        return meta

    async def _await_job(self, job: Job, request: web.Request) -> list:
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
        if not self.scheduler.worker.is_alive():
            return "generation worker is not running"
        stalled = self.scheduler.stalled_for()
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
        probe = SequenceRequest(input_ids=[0], sampling=SamplingParams(max_new_tokens=1, temperature=0.0))
        job = Job(sequences=[probe], loop=loop, future=loop.create_future())
        self.scheduler.submit(job)
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
            "model_path": str(self.engine.model_path), "tp_size": 1, "dp_size": 1,
            "weight_version": self.engine.weight_version, "device": str(self.engine.device),
            "max_batch_sequences": self.scheduler.max_batch_sequences, "server": "megarl-builtin",
            "paused": self.scheduler.paused, "queued_requests": self.scheduler.queued,
            "running_batch": self.scheduler.running_batch, "batches_run": self.scheduler.batches_run,
            "recent_batch_sequences": self.scheduler.batch_sizes[-10:],
        })

    # ---- control -----------------------------------------------------------------------
    async def handle_flush_cache(self, request: web.Request) -> web.Response:
        self._check_token(request)
        # No prefix cache survives between batches here, so there is nothing to drop.
        return web.Response(text="Cache flushed.\n")

    async def handle_pause(self, request: web.Request) -> web.Response:
        self._check_token(request)
        body = await self._json(request, optional=True)
        await self._in_thread(self.scheduler.pause, body.get("mode", "abort"))
        return web.json_response({"message": "Generation paused successfully.", "status": "ok"})

    async def handle_continue(self, request: web.Request) -> web.Response:
        self._check_token(request)
        self.weights.release_buffers()  # the update is over
        self.scheduler.resume()
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
        self.weights.set_version(body["new_version"])
        return web.json_response({"success": True, "message": f"Weight version updated to {body['new_version']}",
                                  "new_version": body["new_version"]})

    # ---- weight updates (megarl.rollout.weight_receiver) -----------------------------------------
    async def handle_begin_update(self, request: web.Request) -> web.Response:
        self._check_token(request)
        body = await self._json(request, optional=True)
        self.weights.begin(body.get("selector", "all"))
        return web.json_response({"success": True, "message": "Success"})

    async def handle_end_update(self, request: web.Request) -> web.Response:
        self._check_token(request)
        await self._json(request, optional=True)
        self.weights.end()
        return web.json_response({"success": True, "message": "Success"})

    def _finish_update(self, count: int, body: dict, how: str) -> web.Response:
        if body.get("weight_version") is not None:
            self.weights.set_version(body["weight_version"])
        return web.json_response({"success": True, "message": f"Succeeded to update {count} tensors {how}.",
                                  "num_paused_requests": 0})

    async def handle_update_from_disk(self, request: web.Request) -> web.Response:
        self._check_token(request)
        body = await self._json(request)
        if not body.get("model_path"):
            raise HTTPError(400, "update_weights_from_disk needs model_path (a directory of *.safetensors files)")
        count = await self._in_thread(self.weights.load_from_disk, body["model_path"])
        return self._finish_update(count, body, "from disk")

    async def handle_update_from_tensor(self, request: web.Request) -> web.Response:
        self._check_loopback(request)
        self._check_token(request)
        body = await self._json(request)
        self.weights.require_session("update_weights_from_tensor")
        count = await self._in_thread(self.weights.load_tensors, body.get("serialized_named_tensors"), body.get("load_format"))
        return self._finish_update(count, body, "from tensor")

    async def handle_init_group(self, request: web.Request) -> web.Response:
        self._check_token(request)
        body = await self._json(request)
        name = await self._in_thread(self.weights.init_group, body)
        return web.json_response({"success": True, "message": f"Succeeded to initialize group {name!r} "
                                                              f"({body.get('backend', 'gloo')})."})

    async def handle_destroy_group(self, request: web.Request) -> web.Response:
        self._check_token(request)
        body = await self._json(request, optional=True)
        name = body.get("group_name", DEFAULT_GROUP_NAME)
        self.weights.destroy_group(name)
        return web.json_response({"success": True, "message": f"Succeeded to destroy group {name!r}."})

    async def handle_update_from_distributed(self, request: web.Request) -> web.Response:
        self._check_token(request)
        body = await self._json(request)
        self.weights.require_session("update_weights_from_distributed")
        self.weights.group(body.get("group_name", DEFAULT_GROUP_NAME))  # refused here, before the thread, when missing
        count = await self._in_thread(self.weights.receive, body)
        return self._finish_update(count, body, "from distributed")


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
                max_batch_sequences: int = MAX_BATCH_SEQUENCES, ready=None, **limits) -> None:
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
