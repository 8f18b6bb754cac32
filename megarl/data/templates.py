"""Prompt templates for math reasoning (qwen-boxed, qwen25-math-cot, abel, r1, none) and their stops.

Every template is the literal string its paper's code builds, never the checkpoint's chat
template (which would swap in the tokenizer's default system prompt, repeat the boxed
instruction, or fail on a base tokenizer without one). Sources, with the rendered prompts
checked byte for byte in tests/data/test_templates.py:
- qwen-boxed, qwen25-math-cot, abel: hkust-nlp/simpleRL-reason
  `examples/simplelr_math_eval/utils.py` `PROMPT_TEMPLATES` (SimpleRL-Zoo; the training data
  carries the same strings).
- qwen25-math-cot is also Dr. GRPO's `qwen_math` and r1 its `r1`: sail-sg/understand-r1-zero
  `train_zero_math.py` `apply_qwen_math_template`, `apply_r1_template`.
- torl: ToRL's `tir_base_0309` (GAIR-NLP/ToRL@cb78cf1 `verl/utils/dataset/rl_dataset.py`), the prompt of its
  tool-integrated runs (the model writes ```python blocks; megarl.rollout.multi_turn runs them).
Each template also names how its answers are graded: "boxed" (the last `\\boxed{}`) or "r1"
(the `<answer>` block). Stop strings are only those upstream stops on: the ChatML turn end for
the ChatML templates (a string, so it matches however a non-Qwen tokenizer splits it) and
`</answer>` for r1; per-model stop tokens go in a recipe's `rollout.stop_token_ids`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CHATML_TURN_END = "<|im_end|>"
QWEN_BOXED_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n{question}\n" + BOXED_INSTRUCTION + "<|im_end|>\n"
    "<|im_start|>assistant\n"
)
QWEN_MATH_COT_PROMPT = (
    "<|im_start|>system\n" + BOXED_INSTRUCTION + "<|im_end|>\n"
    "<|im_start|>user\n{question}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
ABEL_PROMPT = "Question:\n{question}\nAnswer:\nLet's think step by step.\n"
R1_PROMPT = (
    "A conversation between User and Assistant. The User asks a question, and the Assistant solves it. "
    "The Assistant first thinks about the reasoning process in the mind and then provides the User with the answer. "
    "The reasoning process is enclosed within <think> </think> and answer is enclosed within <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>.\n"
    "User: {question}\nAssistant: <think>"
)
TORL_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it.\n"
    "User: Please integrate natural language reasoning with programs to solve the problem above, and put your final "
    "answer within \\boxed{}.\n{question}\nAssistant:\n"
)


@dataclass(frozen=True)
class PromptTemplate:
    """One prompt format: the literal prompt around a question, and when generation stops."""

    name: str
    prompt_format: str  # the whole prompt; "{question}" marks the question
    stop: tuple[str, ...] = ()  # stop strings besides the tokenizer's end-of-sequence token
    answer_format: str = "boxed"  # how responses are graded: "boxed" or "r1"


TEMPLATES: dict[str, PromptTemplate] = {
    "qwen-boxed": PromptTemplate("qwen-boxed", QWEN_BOXED_PROMPT, stop=(CHATML_TURN_END,)),
    "qwen25-math-cot": PromptTemplate("qwen25-math-cot", QWEN_MATH_COT_PROMPT, stop=(CHATML_TURN_END,)),
    "abel": PromptTemplate("abel", ABEL_PROMPT),
    # The prompt ends inside <think>; generation stops at </answer> (kept with no_stop_trim, or
    # trimmed: the grader accepts both).
    "r1": PromptTemplate("r1", R1_PROMPT, stop=("</answer>",), answer_format="r1"),
    "none": PromptTemplate("none", "{question}"),
    "torl": PromptTemplate("torl", TORL_PROMPT),
}


def get_template(name: str) -> PromptTemplate:
    if name not in TEMPLATES:
        raise ValueError(f"unknown prompt template {name!r}; use one of {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def render_prompt(template: str | PromptTemplate, question: str, tokenizer: Any = None) -> str:
    """The prompt text for one question: the template's literal string (the tokenizer is not used;
    it is accepted so callers need not care)."""
    spec = get_template(template) if isinstance(template, str) else template
    return spec.prompt_format.replace("{question}", question)


def stop_strings(template: str | PromptTemplate, tokenizer: Any = None, *, template_stops: bool = True) -> list[str]:
    """Stop strings for a template: its own (unless template_stops is false: rollout.template_stops) plus the
    tokenizer's EOS token."""
    spec = get_template(template) if isinstance(template, str) else template
    stops = list(spec.stop) if template_stops else []
    eos = getattr(tokenizer, "eos_token", None) if tokenizer is not None else None
    if eos:
        stops.append(eos)
    return list(dict.fromkeys(stops))  # unique, in order
