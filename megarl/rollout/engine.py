"""The built-in rollout server's generation engine: batched sampling with a KV cache on CPU.

`GenerationEngine` holds a Hugging Face causal LM (fp32 on CPU by default) and runs one batch of
sequences at a time: left-padded prefill, then token-by-token decode with a `DynamicCache`.
Each sequence has its own sampling parameters (temperature, top_p, top_k, min_p, seeds), stop
strings, stop token ids and length limit, so requests with different settings share a batch.

Log-probs follow SGLang's default: they are taken from `log_softmax(logits / temperature)`
(temperature 0, i.e. greedy, counts as 1), before top-k/top-p/min-p truncation. With
temperature 1 they are the model's own log-probs, which is what weight-sync tests compare.

`load_weights` copies tensors into the model by Hugging Face parameter name, checking names,
shapes and dtypes; the server holds `model_lock` around it so no batch sees half an update.

Limits, checked per request before it joins a batch (so one bad request fails alone, with the
limit named): the prompt must be shorter than the model's context length and prompt plus
`max_new_tokens` must fit in it (SGLang's checks and messages); sampling values must be finite
and in range (SGLang's `SamplingParams.verify`). A sequence whose `CancelToken` fires (client
gone, deadline passed) leaves the running batch at the next decode step.
"""

from __future__ import annotations

import difflib
import os
import threading
import time
from dataclasses import dataclass
from typing import Iterable

import torch

from megarl.rollout.protocol import SamplingParams, SamplingParamsError, context_length_of
from megarl.runtime.device import get_device

GENERATOR_SEED_RANGE = (-(1 << 63), (1 << 64) - 1)  # what torch.Generator.manual_seed accepts


class CancelToken:
    """Shared by the sequences of one request: `cancel(reason)` (client gone) or a deadline stops them."""

    def __init__(self, deadline: float | None = None, deadline_reason: str = "the request's deadline passed"):
        self.deadline = deadline  # time.monotonic() value, or None for no deadline
        self.deadline_reason = deadline_reason
        self.reason: str | None = None

    def cancel(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason

    def check(self) -> str | None:
        """Why the request is cancelled, or None while it should keep running."""
        if self.reason is None and self.deadline is not None and time.monotonic() >= self.deadline:
            self.reason = self.deadline_reason
        return self.reason


def _abort_reason(message: str) -> dict:
    """SGLang's finish_reason of an aborted request."""
    return {"type": "abort", "message": message, "status_code": None, "err_type": None}


@dataclass
class SequenceRequest:
    """One sequence to generate (a request with n samples becomes n of these)."""

    input_ids: list[int]
    sampling: SamplingParams
    sample_index: int = 0
    return_logprob: bool = False
    logprob_start_len: int = -1  # -1: no input logprobs (SGLang's default)
    return_routed_experts: bool = False  # MoE: the experts of every routed token (routing replay)
    cancel: CancelToken | None = None  # shared by the sequences of one request

    def generator_seed(self) -> int | None:
        """The seed of this sequence's own random stream (None: the engine's shared generator)."""
        if self.sampling.sampling_seed is None:
            return None
        seed = int(self.sampling.sampling_seed) * 1_000_003 + self.sample_index
        if not GENERATOR_SEED_RANGE[0] <= seed <= GENERATOR_SEED_RANGE[1]:
            seed %= 1 << 64  # large seeds wrap instead of overflowing torch's 64-bit seed
        return seed


@dataclass
class SequenceResult:
    output_ids: list[int]
    text: str
    finish_reason: dict
    output_logprobs: list[float] | None
    input_logprobs: list[float | None] | None
    weight_version: str
    prompt_tokens: int
    routed_experts: torch.Tensor | None = None  # [prompt + output - 1, layers, top_k] (SGLang's rows)


class GenerationEngine:
    """A causal LM plus the batched generation loop; thread-safe through `model_lock`."""

    def __init__(self, model_path: str, *, dtype: torch.dtype = torch.float32, seed: int = 0,
                 weight_version: str = "default", context_length: int | None = None):
        """context_length: longest prompt plus generation a request may ask for (default: the
        model config's max_position_embeddings, as SGLang)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not os.path.isdir(model_path):
            raise FileNotFoundError(f"model directory {model_path!r} does not exist; pass a Hugging Face model directory")
        self.model_path = model_path
        self.device = get_device()
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(self.device).eval()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        except (OSError, ValueError, TypeError):
            self.tokenizer = None  # token-id-only serving; text fields come back empty
        self.model_lock = threading.RLock()
        self.weight_version = weight_version
        self.default_generator = torch.Generator(device="cpu").manual_seed(seed)
        from megarl.rollout.routed_experts import HFRouteRecorder

        self.route_recorder = HFRouteRecorder(self.model)  # records nothing for a dense model
        self.eos_token_ids = self._eos_token_ids()
        self._special_stop_ids: dict[tuple[str, bool], int | None] = {}  # see _stop_plan
        self.pad_token_id = self._pad_token_id()
        self.vocab_size = self.model.get_output_embeddings().weight.shape[0]
        self.context_length = context_length or self._config_context_length()
        self._max_token_chars: int | None = None  # see text_may_fit
        # Name -> tensor, including aliases of tied weights (lm_head.weight and embed_tokens.weight).
        self._tensors_by_name = dict(self.model.named_parameters(remove_duplicate=False))
        self._tensors_by_name.update(dict(self.model.named_buffers(remove_duplicate=False)))
        from megarl.models.architectures.qwen3_moe import per_expert_views

        self._tensors_by_name.update(per_expert_views(self.model))  # fused experts under the hub's names

    def _config_context_length(self) -> int | None:
        return context_length_of(self.model.config)

    # ---- tokenizer helpers -------------------------------------------------------------
    def _eos_token_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.model.config, self.tokenizer):
            value = getattr(source, "eos_token_id", None) if source is not None else None
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return ids

    def _pad_token_id(self) -> int:
        for source in (self.tokenizer, self.model.config):
            value = getattr(source, "pad_token_id", None) if source is not None else None
            if isinstance(value, int):
                return value
        return min(self.eos_token_ids) if self.eos_token_ids else 0

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def token_text(self, token_id: int) -> str | None:
        if self.tokenizer is None:
            return None
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise SamplingParamsError(f"the model at {self.model_path} has no tokenizer; send input_ids instead of text")
        if not self.text_may_fit(text):
            raise SamplingParamsError(
                f"The input ({len(text)} characters, at least {len(text) // (2 * self._max_token_chars)} tokens) is longer "
                f"than the model's context length ({self.context_length} tokens).")
        return self.tokenizer.encode(text, add_special_tokens=False)

    def text_may_fit(self, text: str) -> bool:
        """False when `text` surely has more tokens than the context length, judged without tokenizing it.

        No token stands for more characters than its longest vocabulary entry (byte-level BPE
        and sentencepiece alike); the factor 2 leaves room for normalizers that merge characters.
        """
        if self.context_length is None or self.tokenizer is None:
            return True
        if self._max_token_chars is None:
            self._max_token_chars = max(1, max((len(t) for t in self.tokenizer.get_vocab()), default=1))
        return len(text) <= 2 * self._max_token_chars * self.context_length

    # ---- weights -----------------------------------------------------------------------
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Copy tensors into the model by HF name; returns how many were loaded.

        Every name, shape and dtype is checked before anything is copied, so a bad update
        leaves the model as it was.
        """
        items = list(named_tensors)
        problems = []
        for name, tensor in items:
            target = self._tensors_by_name.get(name)
            if target is None:
                close = difflib.get_close_matches(name, list(self._tensors_by_name), n=2)
                problems.append(f"unknown parameter {name!r}" + (f" (did you mean {close}?)" if close else ""))
            elif tuple(tensor.shape) != tuple(target.shape):
                problems.append(f"{name}: shape {tuple(tensor.shape)} does not match the model's {tuple(target.shape)}")
            elif tensor.dtype.is_floating_point != target.dtype.is_floating_point:
                problems.append(f"{name}: dtype {tensor.dtype} cannot be loaded into a {target.dtype} parameter")
        if problems:
            raise ValueError(f"weight update for {self.model.config.model_type} rejected, nothing was loaded: "
                             + "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else ""))
        with self.model_lock, torch.no_grad():
            for name, tensor in items:
                self._tensors_by_name[name].copy_(tensor)
        return len(items)

    def load_weights_from_disk(self, model_path: str) -> int:
        """Load every `*.safetensors` file in the directory `model_path` (taken literally: no
        glob expansion of `*`, `?` or `[` in it) into the model by HF name."""
        from safetensors.torch import load_file

        if not os.path.isdir(model_path):
            raise FileNotFoundError(f"model_path {model_path!r} is not a directory; pass the directory holding the *.safetensors files")
        files = sorted(os.path.join(model_path, name) for name in os.listdir(model_path) if name.endswith(".safetensors"))
        if not files:
            raise FileNotFoundError(f"no *.safetensors files in {model_path!r}; write the weights there first")
        named = []
        for path in files:
            named.extend(load_file(path, device="cpu").items())
        return self.load_weights(named)

    # ---- generation --------------------------------------------------------------------
    def validate_input_ids(self, input_ids: list[int]) -> None:
        if not input_ids:
            raise SamplingParamsError("input_ids is empty; send at least one prompt token")
        if self.context_length is not None and len(input_ids) >= self.context_length:
            raise SamplingParamsError(f"The input ({len(input_ids)} tokens) is longer than the model's context length "
                                      f"({self.context_length} tokens).")
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in input_ids):
            raise SamplingParamsError("input_ids must be a list of integers (or a list of such lists for a batch)")
        bad = [t for t in input_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise SamplingParamsError(f"input_ids contain token ids {bad[:5]} outside the vocabulary [0, {self.vocab_size})")

    def validate_request(self, input_ids: list[int], sampling: SamplingParams) -> None:
        """The prompt's checks plus SGLang's total-length check (prompt + max_new_tokens)."""
        self.validate_input_ids(input_ids)
        total = len(input_ids) + sampling.max_new_tokens
        if self.context_length is not None and total > self.context_length:
            raise SamplingParamsError(
                f"Requested token count exceeds the model's maximum context length of {self.context_length} tokens. "
                f"You requested a total of {total} tokens: {len(input_ids)} tokens from the input and "
                f"{sampling.max_new_tokens} tokens for the completion. Reduce max_new_tokens or the prompt.")

    @torch.no_grad()
    def generate(self, requests: list[SequenceRequest], should_abort=lambda: False) -> list[SequenceResult]:
        """Generate all `requests` as one batch; `should_abort()` is polled between decode steps."""
        with self.model_lock:
            return self._generate_locked(requests, should_abort)

    def _forward(self, input_ids, attention_mask, position_ids, cache):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
        return out.logits.float(), out.past_key_values

    def _generate_locked(self, requests: list[SequenceRequest], should_abort) -> list[SequenceResult]:
        from transformers import DynamicCache

        version = self.weight_version
        batch = len(requests)
        for req in requests:
            self.validate_input_ids(req.input_ids)
        lengths = [len(r.input_ids) for r in requests]
        width = max(lengths)
        device = self.device
        ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for row, req in enumerate(requests):
            ids[row, width - lengths[row]:] = torch.tensor(req.input_ids)
            mask[row, width - lengths[row]:] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits, cache = self._forward(ids, mask, positions, DynamicCache())
        recording = self.route_recorder.active and any(r.return_routed_experts for r in requests)
        routes: list[list[torch.Tensor]] = [[] for _ in range(batch)]
        if recording:  # each prompt's rows (left-padded), then one row per token fed while decoding
            prefill = self.route_recorder.take(batch, width)
            for row in range(batch):
                routes[row].append(prefill[row, width - lengths[row]:])

        temperatures = torch.tensor([r.sampling.logprob_temperature for r in requests], device=device).unsqueeze(-1)
        input_logprobs: list[list[float | None] | None] = [None] * batch
        for row, req in enumerate(requests):
            if req.return_logprob and req.logprob_start_len >= 0:
                start = min(req.logprob_start_len, lengths[row])
                offset = width - lengths[row]
                row_logits = logits[row, offset:width - 1] / temperatures[row]
                token_lp = torch.log_softmax(row_logits, -1).gather(
                    -1, ids[row, offset + 1:].unsqueeze(-1)).squeeze(-1).tolist()
                full = [None] + token_lp  # the first prompt token has no prefix to condition on
                input_logprobs[row] = full[start:]

        generators = []
        for req in requests:
            seed = req.generator_seed()
            generators.append(self.default_generator if seed is None else torch.Generator(device="cpu").manual_seed(seed))

        # Uniform draws of the batched temperature sampler, per row from that row's generator,
        # drawn once for the whole generation (not one generator call per row per token).
        horizon = max((r.sampling.max_new_tokens for r in requests), default=0)
        uniforms = torch.zeros(batch, max(horizon, 1))
        for row, req in enumerate(requests):
            if self._plain_sampling(req.sampling) and req.sampling.max_new_tokens:
                uniforms[row, :req.sampling.max_new_tokens] = torch.rand(req.sampling.max_new_tokens, generator=generators[row])
        stop_plans = [self._stop_plan(req.sampling) for req in requests]

        outputs: list[list[int]] = [[] for _ in range(batch)]
        out_logprobs: list[list[float]] = [[] for _ in range(batch)]
        finish: list[dict | None] = [None] * batch
        texts: list[str | None] = [None] * batch
        for row, req in enumerate(requests):
            if req.sampling.max_new_tokens == 0:
                finish[row] = {"type": "length", "length": 0}
        next_logits = logits[:, -1, :]
        last_pos = positions[:, -1]
        rows = list(range(batch))  # the requests still in the model's batch, by index into `requests`
        step = -1
        while not all(f is not None for f in finish):
            step += 1
            if should_abort():
                for row in range(batch):
                    if finish[row] is None:
                        finish[row] = {"type": "abort", "message": "generation aborted by /pause_generation (mode=abort)",
                                       "status_code": 503, "err_type": None}
                break
            cancelled = self._cancelled_rows(requests, rows, finish)
            if cancelled:
                if all(f is not None for f in finish):
                    break
                # Drop the cancelled rows from the batch (and the KV cache): no more work on them.
                keep = [i for i, row in enumerate(rows) if row not in cancelled]
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                mask, last_pos, next_logits, temperatures = mask[index], last_pos[index], next_logits[index], temperatures[index]
                uniforms = uniforms[torch.tensor(keep)]
                rows = [rows[i] for i in keep]
            tokens = self._sample(next_logits, [requests[r] for r in rows], [generators[r] for r in rows],
                                  [finish[r] for r in rows], uniforms[:, step])
            step_logprobs = torch.log_softmax(next_logits / temperatures, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
            token_list, logprob_list = tokens.tolist(), step_logprobs.tolist()  # one conversion per step, not per row
            for position, row in enumerate(rows):
                if finish[row] is not None:
                    continue
                outputs[row].append(token_list[position])
                out_logprobs[row].append(logprob_list[position])
                finish[row], texts[row] = self._check_finish(requests[row], outputs[row], stop_plans[row])
            if all(f is not None for f in finish):
                break
            mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=device)], dim=1)
            last_pos = last_pos + 1
            feed = tokens.clone()
            done_positions = [position for position, row in enumerate(rows) if finish[row] is not None]
            if done_positions:
                feed[done_positions] = self.pad_token_id
            logits, cache = self._forward(feed.unsqueeze(-1), mask, last_pos.unsqueeze(-1), cache)
            next_logits = logits[:, -1, :]
            if recording:
                step_routes = self.route_recorder.take(len(rows), 1)
                for position, row in enumerate(rows):
                    if finish[row] is None:
                        routes[row].append(step_routes[position])

        results = []
        for row, req in enumerate(requests):
            text = texts[row]
            if text is None:
                text = self.decode(outputs[row], req.sampling.skip_special_tokens)
            results.append(SequenceResult(
                output_ids=outputs[row], text=text, finish_reason=finish[row],
                output_logprobs=out_logprobs[row] if req.return_logprob else None,
                input_logprobs=input_logprobs[row], weight_version=version, prompt_tokens=lengths[row],
                routed_experts=torch.cat(routes[row]) if recording and req.return_routed_experts else None))
        return results

    def aborted_result(self, request: SequenceRequest, reason: str) -> SequenceResult:
        """The result of a sequence cancelled before it ran."""
        return SequenceResult(output_ids=[], text="", finish_reason=_abort_reason(reason),
                              output_logprobs=[] if request.return_logprob else None, input_logprobs=None,
                              weight_version=self.weight_version, prompt_tokens=len(request.input_ids))

    @staticmethod
    def _cancelled_rows(requests: list[SequenceRequest], rows: list[int], finish: list[dict | None]) -> set[int]:
        """Rows whose request was cancelled since the last step; each gets an abort finish reason."""
        cancelled = set()
        for row in rows:
            token = requests[row].cancel
            reason = token.check() if token is not None and finish[row] is None else None
            if reason is not None:
                finish[row] = _abort_reason(reason)
                cancelled.add(row)
        return cancelled

    @staticmethod
    def _plain_sampling(s: SamplingParams) -> bool:
        """Pure temperature sampling (the batched inverse-CDF path of `_sample`)."""
        return not s.greedy and s.top_k == -1 and s.top_p >= 1.0 and s.min_p <= 0.0

    def _stop_plan(self, sampling: SamplingParams) -> tuple[dict[int, str], list[str]]:
        """Split the stop strings into ({token id: string} for strings that are one special token,
        which decoding with skip_special_tokens never shows, so they are matched by id) and the
        strings matched in the decoded text."""
        by_id: dict[int, str] = {}
        text: list[str] = []
        for stop in sampling.stop:
            key = (stop, sampling.skip_special_tokens)
            if key not in self._special_stop_ids:
                tid = None
                if self.tokenizer is not None:
                    ids = self.tokenizer.encode(stop, add_special_tokens=False)
                    if (len(ids) == 1 and self.decode(ids, False) == stop
                            and self.decode(ids, sampling.skip_special_tokens) == ""):
                        tid = ids[0]
                self._special_stop_ids[key] = tid
            tid = self._special_stop_ids[key]
            if tid is None:
                text.append(stop)
            else:
                by_id[tid] = stop
        return by_id, text

    def _check_finish(self, req: SequenceRequest, output: list[int],
                      plan: tuple[dict[int, str], list[str]] | None = None) -> tuple[dict | None, str | None]:
        """(finish_reason or None, trimmed text when a stop string matched)."""
        sampling = req.sampling
        token = output[-1]
        if token in sampling.stop_token_ids:
            return {"type": "stop", "matched": token}, None
        stop_ids, stop_texts = plan if plan is not None else self._stop_plan(sampling)
        if token in stop_ids:
            return {"type": "stop", "matched": stop_ids[token]}, None
        if not sampling.ignore_eos and token in self.eos_token_ids:
            return {"type": "stop", "matched": token}, None
        if stop_texts and self.tokenizer is not None:
            text = self.decode(output, sampling.skip_special_tokens)
            hits = [(text.find(s), s) for s in stop_texts if s in text]
            if hits:
                index, matched = min(hits)
                return {"type": "stop", "matched": matched}, (text if sampling.no_stop_trim else text[:index])
        if len(output) >= sampling.max_new_tokens:
            return {"type": "length", "length": sampling.max_new_tokens}, None
        return None, None

    def _sample(self, logits: torch.Tensor, requests: list[SequenceRequest], generators, finish,
                uniforms: torch.Tensor) -> torch.Tensor:
        """One token per row under that row's temperature/top-k/top-p/min-p. `uniforms[row]` is
        the row's uniform draw for this step (pure temperature sampling)."""
        batch, vocab = logits.shape
        tokens = torch.zeros(batch, dtype=torch.long, device=logits.device)
        plain = [row for row, req in enumerate(requests) if finish[row] is None and self._plain_sampling(req.sampling)]
        if plain:
            # Pure temperature sampling, batched: inverse-CDF with one uniform draw per row from
            # that row's own generator (so seeds stay per sequence).
            rows = torch.tensor(plain, device=logits.device)
            temps = torch.tensor([requests[r].sampling.temperature for r in plain], device=logits.device, dtype=logits.dtype)
            probs = torch.softmax(logits[rows] / temps.unsqueeze(1), -1)
            cdf = probs.cumsum(-1)
            u = uniforms[plain].to(logits.device, cdf.dtype)
            picked = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1)).squeeze(1).clamp(max=vocab - 1)
            tokens[rows] = picked
        done = set(plain)
        for row, req in enumerate(requests):
            if finish[row] is not None or row in done:
                continue
            s = req.sampling
            row_logits = logits[row]
            if s.greedy:
                tokens[row] = int(torch.argmax(row_logits))
                continue
            probs = torch.softmax(row_logits / s.temperature, -1)
            sorted_probs, sorted_ids = probs.sort(descending=True)
            keep = torch.ones(vocab, dtype=torch.bool, device=logits.device)
            if 0 < s.top_k < vocab:
                keep[s.top_k:] = False
            if s.top_p < 1.0:
                before = sorted_probs.cumsum(-1) - sorted_probs  # mass strictly above each token
                keep &= before < s.top_p
            if s.min_p > 0.0:
                keep &= sorted_probs >= s.min_p * sorted_probs[0]
            keep[0] = True
            kept = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
            choice = torch.multinomial(kept.cpu(), 1, generator=generators[row])
            tokens[row] = sorted_ids[int(choice)]
        return tokens

