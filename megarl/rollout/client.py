"""Rollout client: async HTTP generation against SGLang-protocol servers, with failover.

`RolloutClient(urls).generate(prompts_token_ids, SamplingParams(...), n=8)` returns, for each
prompt in order, its `n` `Sample`s. Each prompt is one native `/generate` request (`input_ids`
plus `sampling_params` with `n`), sent to the live server with the fewest requests in flight
(or through an `sglang-router` URL). At most `max_concurrency` requests are in flight.

Failure handling: a request that cannot connect marks its server dead for the rest of the
call; one that times out or gets HTTP 5xx counts against its server, which is marked dead only
after `dead_after_errors` different requests in a row failed there (a success resets the count,
and these errors never mark the last live server dead: a request that fails everywhere is the
request's fault, not every server's). Either way the request is re-sent to another live server
after a backoff; a response aborted by `/pause_generation` or produced by weights other than
`expected_weight_version` is re-sent too. Every prompt's result is stored once, in its slot,
so no prompt is lost or duplicated and the order is the prompts' order. HTTP 4xx (a bad
request) fails that prompt at once with the server's message, without a retry and without
marking any server; the other prompts still finish, then the call raises a `RolloutError`
naming every failed prompt, with the finished prompts' samples in its `partial_results`.

Context: with `context_length` (the served model's, `context_length_of(config)`), each request's
`max_new_tokens` is capped at what the context leaves after its prompt, as vLLM generates "up to
the model's length"; SGLang (`TokenizerManager._validate_one_request`: prompt + max_new_tokens must
not exceed context_len; extra reserved slots only with EAGLE speculative decoding, which megarl does
not launch) and the built-in server (the same check) would reject the request otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import aiohttp

from megarl.rollout.fleet import wait_for_servers
from megarl.rollout.protocol import MAX_CONCURRENCY, REQUEST_TIMEOUT_S, SamplingParams


class RolloutError(RuntimeError):
    """Generation could not be completed (all servers dead, retries exhausted, or a bad request).

    `partial_results`, when set by `agenerate`: per prompt, its samples or None if it failed.
    """

    partial_results: list | None = None


class RequestRejected(RolloutError):
    """A server answered HTTP 4xx: the request itself is bad (not retried, no server marked)."""


class WeightVersionMismatch(RolloutError):
    """Servers kept answering with weights other than the expected `weight_version`."""


class _Retryable(Exception):
    """A failed attempt worth re-sending. server_dead: the server is unreachable (connection
    failure); server_error: it timed out or answered 5xx (counts toward `dead_after_errors`)."""

    def __init__(self, message: str, *, server_dead: bool = False, server_error: bool = False):
        super().__init__(message)
        self.server_dead = server_dead
        self.server_error = server_error


@dataclass
class Sample:
    """One generated continuation of one prompt."""

    prompt_index: int
    sample_index: int
    output_ids: list[int]
    text: str
    logprobs: list[float] | None  # behaviour-policy log-prob of each output token
    finish_reason: str  # "stop", "length" or "abort"
    matched_stop: int | str | None
    weight_version: str | None
    prompt_tokens: int
    completion_tokens: int
    server: str
    meta_info: dict = field(repr=False, default_factory=dict)
    # The policy version of each output token when the sample was generated in segments across weight
    # updates (partial rollouts; megarl.train.stages.produce); None: every token is `weight_version`'s.
    token_versions: list[int] | None = None


@dataclass
class Connection:
    """An HTTP session and the concurrency limit shared by the requests sent through it."""

    session: aiohttp.ClientSession
    semaphore: asyncio.Semaphore


@dataclass
class _Server:
    url: str
    alive: bool = True
    in_flight: int = 0
    failures: int = 0
    consecutive_errors: int = 0  # requests in a row that timed out or got 5xx here
    busy_s: float = 0.0  # wall time with at least one request of this client in flight, up to busy_since
    busy_since: float | None = None

    def started(self) -> None:
        if self.in_flight == 0:
            self.busy_since = time.monotonic()
        self.in_flight += 1

    def finished(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self.busy_since is not None:
            self.busy_s += time.monotonic() - self.busy_since
            self.busy_since = None


class RolloutClient:
    """Generation across one or many rollout servers (or one router URL)."""

    def __init__(self, urls: Sequence[str] | str, *, max_concurrency: int = MAX_CONCURRENCY,
                 request_timeout_s: float = REQUEST_TIMEOUT_S,
                 max_retries: int = 4, backoff_s: float = 0.2, backoff_max_s: float = 5.0, return_logprob: bool = True,
                 expected_weight_version: str | None = None, health_timeout_s: float = 5.0, dead_after_errors: int = 3,
                 context_length: int | None = None, return_routed_experts: bool = False):
        urls = [urls] if isinstance(urls, str) else list(urls)
        if not urls:
            raise ValueError("RolloutClient needs at least one server URL")
        self.servers = [_Server(u.rstrip("/")) for u in urls]
        self.max_concurrency = max_concurrency
        self.request_timeout_s = request_timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.return_logprob = return_logprob
        self.return_routed_experts = return_routed_experts  # MoE routing replay: each token's experts (SGLang R3)
        self.expected_weight_version = expected_weight_version
        self.health_timeout_s = health_timeout_s
        if dead_after_errors < 1:
            raise ValueError(f"dead_after_errors={dead_after_errors} must be >= 1")
        self.dead_after_errors = dead_after_errors
        self.resends = 0  # requests re-sent after a failure, over the client's life (for logs/tests)
        self.context_length = context_length  # None: max_new_tokens is sent as asked

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def busy_seconds(self) -> float:
        """Server-seconds with a request of this client in flight, summed over servers (server idle time
        is wall time x servers minus this)."""
        now = time.monotonic()
        return sum(s.busy_s + (now - s.busy_since if s.busy_since is not None else 0.0) for s in self.servers)

    # ---- sync wrappers ------------------------------------------------------------------
    def generate(self, prompts_token_ids: list[list[int]], sampling: SamplingParams, n: int | None = None
                 ) -> list[list[Sample]]:
        """Blocking `agenerate`; call `agenerate` from inside an event loop."""
        return _run(self.agenerate(prompts_token_ids, sampling, n))

    def check_health(self) -> dict[str, bool]:
        return _run(self.acheck_health())

    def weight_versions(self) -> dict[str, str | None]:
        return _run(self.aweight_versions())

    def wait_until_healthy(self, timeout_s: float = 120.0) -> None:
        """Block until every server answers /health (megarl.rollout.fleet.wait_for_servers)."""
        healthy = wait_for_servers(self.urls, timeout_s, poll_s=0.5, log=lambda message: None)
        for server in self.servers:
            server.alive = server.url in healthy
        if len(healthy) < len(self.servers):
            raise RolloutError(f"servers not healthy after {timeout_s:.0f} s: {[u for u in self.urls if u not in healthy]}")

    # ---- health and versions ------------------------------------------------------------
    async def acheck_health(self) -> dict[str, bool]:
        """GET /health on every server; marks each alive or dead."""
        timeout = aiohttp.ClientTimeout(total=self.health_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async def probe(server: _Server) -> bool:
                try:
                    async with session.get(server.url + "/health") as response:
                        server.alive = response.status == 200
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                    server.alive = False
                return server.alive
            results = await asyncio.gather(*(probe(s) for s in self.servers))
        return {s.url: ok for s, ok in zip(self.servers, results)}

    async def aweight_versions(self) -> dict[str, str | None]:
        """Each server's current `weight_version` (from GET /model_info); None if unreachable."""
        timeout = aiohttp.ClientTimeout(total=self.health_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async def version(server: _Server) -> str | None:
                try:
                    async with session.get(server.url + "/model_info") as response:
                        return (await response.json()).get("weight_version") if response.status == 200 else None
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
                    return None
            results = await asyncio.gather(*(version(s) for s in self.servers))
        return {s.url: v for s, v in zip(self.servers, results)}

    # ---- generation -----------------------------------------------------------------------
    async def agenerate(self, prompts_token_ids: list[list[int]], sampling: SamplingParams, n: int | None = None
                        ) -> list[list[Sample]]:
        """Each prompt's `n` samples (default sampling.n), in the prompts' order."""
        n = sampling.n if n is None else n
        if n < 1:
            raise ValueError(f"n={n} must be >= 1")
        for i, prompt in enumerate(prompts_token_ids):
            _check_prompt(i, prompt)
        dead = [s for s in self.servers if not s.alive]
        if dead:  # give servers marked dead by an earlier call one more chance
            await self.acheck_health()
        if not any(s.alive for s in self.servers):
            raise RolloutError(f"no rollout server is healthy: {self.urls}")
        results: list[list[Sample] | None] = [None] * len(prompts_token_ids)
        async with self.connect() as conn:
            tasks = [asyncio.create_task(self._one_prompt(conn, i, p, sampling, n, results))
                     for i, p in enumerate(prompts_token_ids)]
            try:
                outcomes = await asyncio.gather(*tasks, return_exceptions=True)  # one prompt's failure stops no other
            except BaseException:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        failures = [(i, err) for i, err in enumerate(outcomes) if isinstance(err, BaseException)]
        for _, err in failures:
            if not isinstance(err, Exception):
                raise err  # KeyboardInterrupt and the like
        if failures:
            first = failures[0][1]
            if len(failures) == 1 and isinstance(first, RolloutError):
                error = first
            else:
                kind = type(first) if isinstance(first, RolloutError) else RolloutError
                error = kind(f"{len(failures)} of {len(prompts_token_ids)} prompts failed: "
                             + " | ".join(f"{type(err).__name__}: {err}" for _, err in failures[:4]))
            error.partial_results = results
            raise error from (first if error is not first else None)
        assert all(r is not None and len(r) == n for r in results)
        return results  # type: ignore[return-value]

    @contextlib.asynccontextmanager
    async def connect(self):
        """A `Connection` for `agenerate_prompt` calls (at most max_concurrency requests in flight)."""
        timeout = aiohttp.ClientTimeout(total=self.request_timeout_s)
        connector = aiohttp.TCPConnector(limit=self.max_concurrency)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            yield Connection(session, asyncio.Semaphore(self.max_concurrency))

    async def agenerate_prompt(self, conn: Connection, index: int, prompt: list[int], sampling: SamplingParams, n: int, *,
                               keep_aborted: bool = False, check_version: bool = True) -> list[Sample]:
        """The `n` samples of one prompt (its seed offset by `index`), with the retries and failover of
        `agenerate`. keep_aborted: a sample cut short by /pause_generation (mode=abort) comes back as it
        is, finish_reason "abort" with the tokens and log-probs generated so far, instead of re-sending
        the request; check_version: enforce `expected_weight_version`."""
        _check_prompt(index, prompt)
        results: list = [None]
        await self._one_prompt(conn, index, prompt, sampling, n, results, keep_aborted=keep_aborted,
                               check_version=check_version, slot=0)
        return results[0]

    def request_body(self, prompt: list[int], sampling: SamplingParams, n: int) -> dict[str, Any]:
        """The SGLang `/generate` JSON for one prompt with `n` samples; max_new_tokens capped at the context
        left after the prompt (a prompt that fills the context is sent as it is, for the server to reject)."""
        params = sampling.to_request(n)
        if self.context_length is not None and len(prompt) < self.context_length:
            params["max_new_tokens"] = min(params["max_new_tokens"], self.context_length - len(prompt))
        body = {"input_ids": prompt, "sampling_params": params, "return_logprob": self.return_logprob}
        if self.return_routed_experts:
            body["return_routed_experts"] = True
        return body

    def _record_failure(self, server: _Server, err: _Retryable) -> None:
        """Mark `server` dead on a connection failure, or after `dead_after_errors` failed requests in a row
        (never the last live one for those: then the requests, not the servers, are at fault)."""
        server.failures += 1
        if err.server_dead:
            server.alive = False
        elif err.server_error:
            server.consecutive_errors += 1
            others_alive = any(s.alive for s in self.servers if s is not server)
            if server.consecutive_errors >= self.dead_after_errors and others_alive:
                server.alive = False

    def _pick_server(self, avoid: set[str]) -> _Server:
        alive = [s for s in self.servers if s.alive]
        if not alive:
            raise RolloutError(f"every rollout server is dead: {self.urls}")
        preferred = [s for s in alive if s.url not in avoid] or alive
        least = min(s.in_flight for s in preferred)
        return random.choice([s for s in preferred if s.in_flight == least])

    async def _one_prompt(self, conn: Connection, index: int, prompt: list[int], sampling: SamplingParams, n: int,
                          results: list, *, keep_aborted: bool = False, check_version: bool = True,
                          slot: int | None = None) -> None:
        if sampling.sampling_seed is not None:
            # Distinct random streams per prompt: prompt i of a call samples with seed + i (the
            # server then offsets by sample index), so no two prompts share their randomness.
            sampling = replace(sampling, sampling_seed=sampling.sampling_seed + index)
        body = self.request_body(prompt, sampling, n)
        tried: set[str] = set()
        counted: set[str] = set()  # servers this request already counted an error against
        errors: list[str] = []
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.resends += 1
                await asyncio.sleep(min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1)) * (0.5 + random.random()))
            async with conn.semaphore:
                server = self._pick_server(tried)
                tried.add(server.url)
                server.started()
                try:
                    samples = await self._request(conn.session, server, body, index, n, keep_aborted=keep_aborted,
                                                  check_version=check_version)
                except _Retryable as err:
                    errors.append(f"{server.url}: {err}")
                    if err.server_dead or server.url not in counted:
                        self._record_failure(server, err)
                    if err.server_error:
                        counted.add(server.url)
                    continue
                finally:
                    server.finished()
            server.consecutive_errors = 0
            results[index if slot is None else slot] = samples
            return
        mismatch = all("weight_version" in e for e in errors)
        cls = WeightVersionMismatch if mismatch else RolloutError
        raise cls(f"prompt {index} failed after {self.max_retries + 1} attempts: " + " | ".join(errors[-4:]))

    async def _request(self, session: aiohttp.ClientSession, server: _Server, body: dict, index: int, n: int, *,
                       keep_aborted: bool = False, check_version: bool = True) -> list[Sample]:
        try:
            async with session.post(server.url + "/generate", json=body) as response:
                if response.status >= 500:
                    raise _Retryable(f"HTTP {response.status}: {_server_message(await response.text())}", server_error=True)
                if response.status != 200:
                    raise RequestRejected(f"{server.url}/generate rejected prompt {index} with HTTP {response.status}: "
                                          f"{_server_message(await response.text())}")
                payload = await response.json()
        except asyncio.TimeoutError:
            raise _Retryable(f"no answer within {self.request_timeout_s} s", server_error=True) from None
        except (aiohttp.ClientConnectionError, OSError) as err:
            raise _Retryable(f"{type(err).__name__}: {err}", server_dead=True) from None
        except (aiohttp.ClientError, ValueError) as err:  # a malformed answer: count it, don't condemn at once
            raise _Retryable(f"{type(err).__name__}: {err}", server_error=True) from None
        items = payload if isinstance(payload, list) else [payload]
        if len(items) != n:
            raise _Retryable(f"expected {n} samples, got {len(items)}", server_dead=False)
        samples = []
        for j, item in enumerate(items):
            meta = item.get("meta_info", {})
            finish = meta.get("finish_reason") or {}
            kind = finish.get("type") if isinstance(finish, dict) else str(finish)
            if kind == "abort" and not keep_aborted:
                raise _Retryable(f"aborted: {finish.get('message')}", server_dead=False)
            version = meta.get("weight_version")
            if check_version and self.expected_weight_version is not None and version != self.expected_weight_version:
                raise _Retryable(f"weight_version {version!r} != expected {self.expected_weight_version!r}",
                                 server_dead=False)
            logprobs = None
            if self.return_logprob:
                logprobs = [float(entry[0]) for entry in meta.get("output_token_logprobs", [])]
            samples.append(Sample(
                prompt_index=index, sample_index=j, output_ids=list(item.get("output_ids", [])), text=item.get("text", ""),
                logprobs=logprobs, finish_reason=kind, matched_stop=finish.get("matched") if isinstance(finish, dict) else None,
                weight_version=version, prompt_tokens=meta.get("prompt_tokens", 0),
                completion_tokens=meta.get("completion_tokens", 0), server=server.url, meta_info=meta))
        return samples


def _check_prompt(index: int, prompt) -> None:
    if not prompt or not all(isinstance(t, int) for t in prompt):
        raise ValueError(f"prompt {index} must be a non-empty list of token ids")


def _server_message(text: str) -> str:
    """The message of an error body (SGLang's {"error": {"message"}} or {"message"}), else the text, shortened."""
    try:
        body = json.loads(text)
    except ValueError:
        return text[:500]
    if isinstance(body, dict):
        error = body.get("error")
        message = error.get("message") if isinstance(error, dict) else body.get("message") or body.get("detail")
        if isinstance(message, str):
            return message[:500]
    return text[:500]


def _run(coroutine):
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    coroutine.close()
    raise RuntimeError("RolloutClient's blocking methods cannot run inside an event loop; await the a* methods")
