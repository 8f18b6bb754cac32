"""Multi-turn rollouts with a Python interpreter (tool-integrated reasoning), token in, token out.

A sample generates until its code block closes (the format's stop string, e.g. "```output" after a
```python block, or "</code>"), the last code block runs in a sandbox (megarl.sandbox), its output is
appended as text between the format's markers, and generation goes on from the whole context, until
the model ends without calling the tool (an answer or its eos), `tool.max_turns` model turns, or the
rollout's token budget (`rollout.max_new_tokens` counts every response token, the tool's too).

Token in, token out: the model's tokens are kept exactly as the server generated them and are sent
back as `input_ids` (never decoded and re-encoded); the tool output alone is tokenized, once, and
appended. The sample carries a per-token `loss_mask` over its response (1: the model generated it,
0: the tool wrote it), its behaviour log-probs for the model tokens only (in order), and a policy
version per token (a tool token takes the version of the model token before it). The trainer packs
the mask with the tokens (megarl.train.batch) so that losses, estimators, KL, entropy and metrics
count model tokens only.

One path for every engine and mode: each model turn is one native `/generate` request with
`input_ids` (the built-in server and SGLang take the same body), sent through a `send` coroutine the
caller gives: the synchronous rollout's sends straight through `RolloutClient.agenerate_prompt`, the
async producer's waits out weight updates first. A turn cut short by a weight update (finish reason
"abort", partial rollouts) is continued from the tokens it has, with the turns it has: the sample in
flight carries them; without partial rollouts it starts again from its prompt.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from typing import Any, Awaitable, Callable, Sequence

from megarl.rollout.client import RolloutClient, Sample, SamplingParams
from megarl.runtime.seeds import fold_seed


@dataclasses.dataclass(frozen=True)
class ToolFormat:
    """How a template marks code and its output. The model's turn ends at `stop`; the code is the last
    block between `code_open` and `code_close` before it; the output goes in as `output_format`."""

    name: str
    stop: str
    code_open: str
    code_close: str
    output_format: str  # "{output}" marks the interpreter's output
    source: str = ""

    def extract_code(self, text: str) -> str | None:
        """The last complete code block of `text` (None: none)."""
        blocks = re.findall(re.escape(self.code_open) + r"[^\n]*\n(.*?)" + re.escape(self.code_close), text, re.DOTALL)
        code = blocks[-1] if blocks else None
        return code if code and code.strip() else None


TOOL_FORMATS: dict[str, ToolFormat] = {
    # ToRL (GAIR-NLP/ToRL, verl/workers/rollout/vllm_rollout/vllm_rollout_spmd.py): stop at "```output";
    # the last ```python block runs; the observation is "```output\n{obs}\n```\n" (the model already wrote
    # the opening marker, which ended its turn).
    "torl": ToolFormat("torl", stop="```output", code_open="```python", code_close="```",
                       output_format="\n{output}\n```\n", source="GAIR-NLP/ToRL vllm_rollout_spmd.py OBS_START/OBS_END"),
    # Tags: <code>...</code> then <output>...</output> (megarl's own, for templates that use tags).
    "tags": ToolFormat("tags", stop="</code>", code_open="<code>", code_close="</code>",
                       output_format="\n<output>\n{output}\n</output>\n"),
}


def get_tool_format(name: str) -> ToolFormat:
    if name not in TOOL_FORMATS:
        raise ValueError(f"unknown tool.format {name!r}; use one of {', '.join(TOOL_FORMATS)}")
    return TOOL_FORMATS[name]


@dataclasses.dataclass(frozen=True)
class ToolCall:
    """One interpreter call of a sample."""

    status: str  # the sandbox's: ok, error, timeout, killed; "none": the turn closed without a code block
    output_tokens: int
    seconds: float


@dataclasses.dataclass
class TurnSample(Sample):
    """A multi-turn sample: `output_ids` holds every response token (the model's and the tool's),
    `loss_mask` marks the model's (1) and the tool's (0), `logprobs` are the model tokens' only."""

    loss_mask: list[int] = dataclasses.field(default_factory=list)
    tool_calls: list[ToolCall] = dataclasses.field(default_factory=list)
    turns: int = 1  # model turns
    continued: int = 0  # turns cut short by a weight update and continued from their tokens (partial rollouts)
    discarded_tokens: int = 0  # tokens dropped when a cut sample started again from its prompt (partial off)


def expand_to_response(values: Sequence[float], mask: Sequence[int], fill: float = 0.0) -> list[float]:
    """Per-model-token values placed at the model tokens of a response (`fill` at tool tokens)."""
    it = iter(values)
    return [float(next(it)) if m else fill for m in mask]


def render_output(result, limit_chars: int) -> str:
    """The interpreter's answer as the model sees it, as ToRL shows it: stdout when the program succeeded or
    printed something, else the last line of stderr (the error), a timeout note for a timeout; cut to
    `limit_chars` (head ... tail)."""
    if result.status == "timeout":
        text = "TimeoutError: the code ran past its time limit"
    elif result.status == "ok" or result.stdout.strip():
        text = result.stdout
    else:
        lines = result.stderr.strip().splitlines() or [f"{result.status}: {result.detail}".strip()]
        text = lines[-1]
    text = text.strip()
    if len(text) > limit_chars:
        half = limit_chars // 2
        text = text[:half] + "..." + text[-half:]
    return text


class ToolRunner:
    """The run's interpreter: a sandbox pool, the format and the tokenizer (built from the `tool` section)."""

    def __init__(self, tool_cfg, tokenizer, pool=None):
        from megarl.sandbox import SandboxLimits, SandboxPool

        self.cfg = tool_cfg
        self.format = get_tool_format(tool_cfg.format)
        self.stop = tool_cfg.stop or self.format.stop
        self.tokenizer = tokenizer
        # The sandbox keeps up to 16 KiB of each stream; render_output shows the model its head and tail.
        self.limits = SandboxLimits(timeout_s=tool_cfg.timeout_s, memory_mb=tool_cfg.memory_mb)
        self.pool = pool if pool is not None else SandboxPool(workers=tool_cfg.workers, limits=self.limits)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    async def call(self, code: str | None) -> tuple[ToolCall, list[int]]:
        """Run `code` (in a thread: the pool blocks) and return the call and the tokens to append."""
        if code is None:
            return ToolCall("none", 0, 0.0), []
        result = await asyncio.get_running_loop().run_in_executor(None, self.pool.run, code)
        ids = self.encode(self.format.output_format.replace("{output}", render_output(result, self.cfg.output_chars)))
        return ToolCall(result.status, len(ids), result.seconds), ids

    def close(self) -> None:
        self.pool.close()


Send = Callable[[list[int], SamplingParams], Awaitable[Sample]]


@dataclasses.dataclass
class _Trajectory:
    ids: list[int] = dataclasses.field(default_factory=list)
    mask: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] | None = dataclasses.field(default_factory=list)
    versions: list[int] = dataclasses.field(default_factory=list)
    calls: list[ToolCall] = dataclasses.field(default_factory=list)
    turns: int = 1

    def add_model(self, seg: Sample) -> None:
        self.ids += seg.output_ids
        self.mask += [1] * len(seg.output_ids)
        if self.logprobs is not None and seg.logprobs is not None and len(seg.logprobs) == len(seg.output_ids):
            self.logprobs += seg.logprobs
        else:
            self.logprobs = None
        if seg.token_versions is not None:
            self.versions += list(seg.token_versions)
        else:
            v = seg.weight_version
            self.versions += [int(v) if v is not None and str(v).isdigit() else -1] * len(seg.output_ids)

    def add_tool(self, call: ToolCall, ids: list[int]) -> None:
        self.calls.append(call)
        self.ids += ids
        self.mask += [0] * len(ids)
        self.versions += [self.versions[-1] if self.versions else -1] * len(ids)


async def complete(send: Send, prompt: list[int], first: Sample, tools: ToolRunner, *, max_new_tokens: int,
                   sampling: Callable[[int, int], SamplingParams], partial: bool = True,
                   stopping: Callable[[], bool] = lambda: False) -> TurnSample:
    """Finish one sample whose first model turn is `first`: run its code and continue, turn by turn.
    `sampling(segment, max_new_tokens)` gives each continuation request's settings (its own seed)."""
    traj, seg, segment, continued, discarded = _Trajectory(), first, 0, 0, 0
    traj.add_model(first)
    while True:
        budget = max_new_tokens - len(traj.ids)
        if seg.finish_reason == "abort":
            if stopping():
                break
            if not partial:  # start again from the prompt
                discarded += len(traj.ids)
                traj = _Trajectory()
                budget = max_new_tokens
            else:
                continued += 1
        elif (seg.finish_reason == "stop" and seg.matched_stop == tools.stop and traj.turns < tools.cfg.max_turns
              and budget > 0):
            call, ids = await tools.call(tools.format.extract_code(tools.decode(traj.ids)))
            if call.status == "none":  # the turn closed without a code block: nothing to run (a void turn)
                traj.calls.append(call)
                break
            if len(ids) >= budget:  # the output does not fit the budget: the sample ends here, cut
                traj.add_tool(call, ids[:budget])
                seg = dataclasses.replace(seg, finish_reason="length", matched_stop=None)
                break
            traj.add_tool(call, ids)
            traj.turns += 1
            budget -= len(ids)
        else:
            break
        segment += 1
        more = await send(prompt + traj.ids, sampling(segment, budget))
        traj.add_model(more)
        seg = more
    return TurnSample(
        prompt_index=first.prompt_index, sample_index=first.sample_index, output_ids=traj.ids,
        text=tools.tokenizer.decode(traj.ids, skip_special_tokens=True), logprobs=traj.logprobs,
        finish_reason=seg.finish_reason, matched_stop=seg.matched_stop, weight_version=seg.weight_version,
        prompt_tokens=len(prompt), completion_tokens=len(traj.ids), server=seg.server, meta_info=seg.meta_info,
        token_versions=traj.versions if any(v >= 0 for v in traj.versions) else None,
        loss_mask=traj.mask, tool_calls=traj.calls, turns=traj.turns, continued=continued, discarded_tokens=discarded,
    )


def with_tool_stop(sampling: SamplingParams, tools: ToolRunner) -> SamplingParams:
    """The rollout's settings plus the tool's stop string (the stop is kept in the tokens: no_stop_trim)."""
    stops = list(dict.fromkeys([*sampling.stop, tools.stop]))
    return dataclasses.replace(sampling, stop=stops, no_stop_trim=True)


def continuation_sampling(sampling: SamplingParams, seed: int | None) -> Callable[[int, int], SamplingParams]:
    """Settings of a sample's continuation requests: segment k gets its own seed derived from `seed`."""
    def make(segment: int, budget: int) -> SamplingParams:
        s = None if seed is None else fold_seed(seed * 131 + segment, 51)
        return dataclasses.replace(sampling, max_new_tokens=max(1, budget), sampling_seed=s)
    return make


async def agenerate(client: RolloutClient, prompts: list[list[int]], sampling: SamplingParams, n: int,
                    tools: ToolRunner) -> list[list[TurnSample]]:
    """`RolloutClient.agenerate` with the interpreter: each prompt's n first turns in one request, then every
    sample on its own."""
    sampling = with_tool_stop(sampling, tools)
    async with client.connect() as conn:
        async def send(prompt: list[int], params: SamplingParams) -> Sample:
            (sample,) = await client.agenerate_prompt(conn, 0, prompt, params, 1)
            return sample

        async def one(index: int, prompt: list[int]) -> list[TurnSample]:
            firsts = await client.agenerate_prompt(conn, index, prompt, sampling, n)
            base = None if sampling.sampling_seed is None else sampling.sampling_seed + index * 4096
            return list(await asyncio.gather(*(
                complete(send, prompt, s, tools, max_new_tokens=sampling.max_new_tokens,
                         sampling=continuation_sampling(sampling, None if base is None else base + j))
                for j, s in enumerate(firsts))))

        return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))


def generate(client: RolloutClient, prompts: list[list[int]], sampling: SamplingParams, n: int = 1,
             tools: ToolRunner | None = None) -> list[list[Sample]]:
    """Blocking generation: single-turn through the client when `tools` is None, else with the interpreter."""
    if tools is None:
        return client.generate(prompts, sampling, n=n)
    return asyncio.run(agenerate(client, prompts, sampling, n, tools))


def tool_metrics(samples: Sequence[Sample]) -> dict:
    """tool/* metrics of a step's samples (empty when none is multi-turn)."""
    turn = [s for s in samples if isinstance(s, TurnSample)]
    if not turn:
        return {}
    calls = [c for s in turn for c in s.tool_calls if c.status != "none"]
    return {
        "tool/calls_per_sample": len(calls) / len(turn),
        "tool/error_rate": sum(c.status in ("error", "killed") for c in calls) / len(calls) if calls else 0.0,
        "tool/timeout_rate": sum(c.status == "timeout" for c in calls) / len(calls) if calls else 0.0,
        "tool/turns": sum(s.turns for s in turn) / len(turn),
        "tool/output_tokens": sum(len(s.loss_mask) - sum(s.loss_mask) for s in turn) / len(turn),
        "tool/void_turn_rate": sum(any(c.status == "none" for c in s.tool_calls) for s in turn) / len(turn),
    }


def filtered_out(sample: Sample, tool_cfg: Any) -> bool:
    """SimpleTIR's trajectory filters: drop from the loss a sample with a void turn (its turn closed
    without code; `filter_void_turns`) or whose last tool call failed (`filter_error_trajectories`)."""
    if not isinstance(sample, TurnSample) or not sample.tool_calls:
        return False
    last = sample.tool_calls[-1]
    if tool_cfg.filter_void_turns and any(c.status == "none" for c in sample.tool_calls):
        return True
    return bool(tool_cfg.filter_error_trajectories and last.status in ("error", "timeout", "killed"))
