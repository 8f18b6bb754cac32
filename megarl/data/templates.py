"""Prompt templates for math reasoning (qwen-boxed, qwen25-math-cot, abel, r1, none) and their stops.

Chat templates (qwen-boxed, qwen25-math-cot) go through the tokenizer's own chat template, so
the same recipe works for Qwen, Llama or Mistral tokenizers; plain templates (abel, r1, none)
are format strings. Each template also names how its answers are graded: "boxed" (the last
`\\boxed{}`) or "r1" (the `<answer>` block).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
R1_PROMPT = (
    "A conversation between User and Assistant. The User asks a question, and the Assistant solves it. "
    "The Assistant first thinks about the reasoning process in the mind and then provides the User with the answer. "
    "The reasoning process is enclosed within <think> </think> and answer is enclosed within <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>.\n"
    "User: {question}\nAssistant: <think>"
)


@dataclass(frozen=True)
class PromptTemplate:
    """One prompt format: how a question becomes the model's input, and when generation stops."""

    name: str
    chat: bool  # rendered through tokenizer.apply_chat_template
    system: str | None = None  # chat: the system message (None: the tokenizer's default, if any)
    user_suffix: str = ""  # chat: appended to the question in the user turn
    plain_format: str = "{question}"  # non-chat: the whole prompt
    stop: tuple[str, ...] = ()  # stop strings besides the tokenizer's end-of-sequence token
    answer_format: str = "boxed"  # how responses are graded: "boxed" or "r1"


TEMPLATES: dict[str, PromptTemplate] = {
    "qwen-boxed": PromptTemplate("qwen-boxed", chat=True, user_suffix="\n" + BOXED_INSTRUCTION),
    "qwen25-math-cot": PromptTemplate("qwen25-math-cot", chat=True, system=BOXED_INSTRUCTION),
    "abel": PromptTemplate(
        "abel", chat=False, plain_format="Question:\n{question}\nAnswer:\nLet's think step by step.\n", stop=("\nQuestion:",)
    ),
    # The prompt ends inside <think>; generation stops at </answer> (kept with no_stop_trim, or
    # trimmed: the grader accepts both).
    "r1": PromptTemplate("r1", chat=False, plain_format=R1_PROMPT, stop=("</answer>",), answer_format="r1"),
    "none": PromptTemplate("none", chat=False, plain_format="{question}"),
}
# Stop strings that end an assistant turn in common chat templates, for tokenizers whose EOS
# token is not the end-of-turn token (Qwen base models: EOS <|endoftext|>, turn end <|im_end|>).
CHAT_TURN_ENDS = ("<|im_end|>", "<|eot_id|>", "</s>", "<|end|>")


def get_template(name: str) -> PromptTemplate:
    if name not in TEMPLATES:
        raise ValueError(f"unknown prompt template {name!r}; use one of {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def render_prompt(template: str | PromptTemplate, question: str, tokenizer: Any = None) -> str:
    """The prompt text for one question. Chat templates need a tokenizer with a chat template."""
    spec = get_template(template) if isinstance(template, str) else template
    if not spec.chat:
        return spec.plain_format.format(question=question)
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        have = "no tokenizer" if tokenizer is None else f"tokenizer {type(tokenizer).__name__} without a chat_template"
        raise ValueError(
            f"template {spec.name!r} renders through the tokenizer's chat template, but got {have}; "
            "pass the model's tokenizer (a base model's tokenizer_config.json usually has one) or use "
            "template 'abel', 'r1' or 'none'"
        )
    messages = []
    if spec.system is not None:
        messages.append({"role": "system", "content": spec.system})
    messages.append({"role": "user", "content": question + spec.user_suffix})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def stop_strings(template: str | PromptTemplate, tokenizer: Any = None) -> list[str]:
    """Stop strings for a template: its own, plus for chat templates the end-of-turn markers that
    the tokenizer knows, plus the tokenizer's EOS token."""
    spec = get_template(template) if isinstance(template, str) else template
    stops = list(spec.stop)
    if tokenizer is not None:
        if spec.chat:
            vocabulary = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
            stops.extend(end for end in CHAT_TURN_ENDS if end in vocabulary)
        eos = getattr(tokenizer, "eos_token", None)
        if eos:
            stops.append(eos)
    return list(dict.fromkeys(stops))  # unique, in order
