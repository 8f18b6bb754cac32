"""Named evaluation protocols (`eval.protocol`): the sampling and scoring each paper reports with.

- "simplerl-zoo": temperature 1.0, top-p 0.95, up to 16000 new tokens, one sample per problem
  and 32 for AIME24 (reported as avg@32, the mean of pass@1 over the samples), with the
  evaluation stop words of the paper's harness. Sources: hkust-nlp/simpleRL-reason README
  ("Evaluate": `--temperature 1.0 --top_p 0.95 --max_tokens 16000`; the results note: "models
  with zero RL training use temperature=1 and top-p=0.95 ... For AIME24 (Avg@32), we sample 32
  responses") and `examples/simplelr_math_eval/math_eval.py` (stop words per prompt type).
- "greedy": temperature 0, one sample, up to 3000 new tokens (Dr. GRPO,
  sail-sg/understand-r1-zero `examples/qwen2.5-math-7b.sh`: `--eval_temperature 0
  --eval_generate_max_length 3000`).
- "custom": the recipe's own `eval.n`, `eval.temperature`, `eval.top_p`, `eval.max_new_tokens`.
Every benchmark is scored as the mean correctness over all its samples (pass@1 averaged over
the samples), which is how both harnesses score; pass@n is reported beside it.

Averages (simplerl-zoo): the paper's "Avg." takes one run per benchmark, AIME24 included
(README: "Average scores are based on AIME (Avg@1) and other benchmarks"), and its step-0
baselines are greedy ("For AIME24 (Pass@1) and other benchmarks, baselines use greedy decoding").
The harness reports both averages, labelled: the paper's (one run per benchmark; a base model's
single run greedy, `baseline_greedy`) and the one with AIME24 as avg@32.

Prompt encoding: every upstream harness hands vLLM the prompt text, and vLLM's tokenizer call
adds the special tokens (BOS for Llama-3.1, Mistral and DeepSeek-Math; Qwen has none). oat says
so in `oat/actors/base.py` ("removeprefix bos_token because vllm will add it"). The named
protocols do the same (`add_special_tokens`); training prompts carry no BOS, as verl's
`tokenize_and_postprocess_data(..., add_special_tokens=False)` in SimpleRL-Zoo's trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EvalProtocol:
    """How a paper samples its evaluation answers."""

    name: str
    temperature: float
    top_p: float
    max_new_tokens: int
    n: int = 1
    n_per_benchmark: dict[str, int] = field(default_factory=dict)  # benchmarks sampled more often
    extra_stops: dict[str, tuple[str, ...]] = field(default_factory=dict)  # template -> stop strings
    add_special_tokens: bool = True  # encode prompts as vLLM does with text prompts (BOS where the tokenizer has one)
    baseline_greedy: bool = False  # a base model's (step 0) single run is greedy, as the paper's baseline rows


PROTOCOLS: dict[str, EvalProtocol] = {
    "simplerl-zoo": EvalProtocol(
        "simplerl-zoo", temperature=1.0, top_p=0.95, max_new_tokens=16000, n=1, n_per_benchmark={"aime24": 32}, baseline_greedy=True,
        # math_eval.py adds these to "</s>", "<|im_end|>", "<|endoftext|>" per prompt type.
        extra_stops={
            "abel": ("Question:", "Answer:"),
            "qwen-boxed": ("assistant", "user", "_end", "_start"),
            "qwen25-math-cot": ("assistant", "user", "_end", "_start"),
        },
    ),
    "greedy": EvalProtocol("greedy", temperature=0.0, top_p=1.0, max_new_tokens=3000, n=1),
}
PROTOCOL_NAMES = ("custom", *PROTOCOLS)


def get_protocol(name: str) -> EvalProtocol | None:
    """The named protocol, or None for "custom" (the recipe's own eval settings)."""
    if name == "custom":
        return None
    if name not in PROTOCOLS:
        raise ValueError(f"unknown eval.protocol {name!r}; use one of {', '.join(PROTOCOL_NAMES)}")
    return PROTOCOLS[name]
