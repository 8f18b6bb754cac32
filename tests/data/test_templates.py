"""Prompt templates render byte for byte as the papers' code renders them, whatever the tokenizer."""

from __future__ import annotations

import pytest

from megarl.data.templates import TEMPLATES, render_prompt, stop_strings
from tiny_tokenizer import build_tiny_tokenizer  # noqa: E402  (beside this file)

QUESTION = "What is $1+1$? Give {x} in \\boxed{}."

# Strings copied from the upstream code. SimpleRL-Zoo renders `input_template.format(input=q)`
# (hkust-nlp/simpleRL-reason examples/simplelr_math_eval/utils.py, PROMPT_TEMPLATES):
SIMPLERL_ZOO_TEMPLATES = {
    "qwen-boxed": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n{input}\nPlease reason step by step, and put your final answer within \\boxed{{}}.<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    "qwen25-math-cot": (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{{}}.<|im_end|>\n"
        "<|im_start|>user\n{input}<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    "abel": "Question:\n{input}\nAnswer:\nLet's think step by step.\n",
}


# Dr. GRPO (sail-sg/understand-r1-zero train_zero_math.py, apply_qwen_math_template / apply_r1_template):
def drgrpo_qwen_math(question: str) -> str:
    return (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n<|im_start|>user\n"
        + question
        + "<|im_end|>\n<|im_start|>assistant\n"
    )


def drgrpo_r1(question: str) -> str:
    return (
        "A conversation between User and Assistant. The User asks a question, and the Assistant solves it. The Assistant first thinks about the reasoning process in the mind and then provides the User with the answer. "
        "The reasoning process is enclosed within <think> </think> and answer is enclosed within <answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>.\nUser: "
        + question
        + "\nAssistant: <think>"
    )


@pytest.mark.parametrize("name", sorted(SIMPLERL_ZOO_TEMPLATES))
def test_simplerl_zoo_templates_byte_for_byte(name):
    expected = SIMPLERL_ZOO_TEMPLATES[name].format(input=QUESTION).strip(" ")  # upstream construct_prompt
    assert render_prompt(name, QUESTION).encode() == expected.encode()


def test_drgrpo_templates_byte_for_byte():
    assert render_prompt("qwen25-math-cot", QUESTION).encode() == drgrpo_qwen_math(QUESTION).encode()
    assert render_prompt("r1", QUESTION).encode() == drgrpo_r1(QUESTION).encode()
    assert render_prompt("none", QUESTION) == QUESTION


@pytest.mark.parametrize("chat_template", [None, "default"])
def test_templates_ignore_the_checkpoints_chat_template(chat_template):
    # A tokenizer with or without its own chat template changes nothing: no default system prompt
    # ("You are Qwen, ..."), no repeated instruction, no error on a base tokenizer.
    tokenizer = build_tiny_tokenizer() if chat_template else build_tiny_tokenizer(chat_template=None)
    for name in TEMPLATES:
        assert render_prompt(name, QUESTION, tokenizer) == render_prompt(name, QUESTION)
    prompt = render_prompt("qwen25-math-cot", QUESTION, tokenizer)
    assert prompt.count("Please reason step by step") == 1
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == prompt


def test_stop_strings_are_only_upstreams():
    tokenizer = build_tiny_tokenizer()
    assert stop_strings("qwen-boxed", tokenizer) == ["<|im_end|>", "<|endoftext|>"]
    assert stop_strings("qwen25-math-cot") == ["<|im_end|>"]
    assert stop_strings("r1", tokenizer) == ["</answer>", "<|endoftext|>"]
    assert stop_strings("abel") == []  # no "\nQuestion:": SimpleRL-Zoo's rollout has none
    assert stop_strings("none") == []
    assert TEMPLATES["r1"].answer_format == "r1" and TEMPLATES["qwen-boxed"].answer_format == "boxed"


def test_unknown_template_names_the_choices():
    with pytest.raises(ValueError, match="unknown prompt template 'llama3'; use one of qwen-boxed, qwen25-math-cot, abel, r1, none"):
        render_prompt("llama3", QUESTION)
