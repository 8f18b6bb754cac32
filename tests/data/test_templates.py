"""Prompt templates rendered through a real (tiny, local) tokenizer's chat template."""

from __future__ import annotations

import pytest

from megarl.data.templates import BOXED_INSTRUCTION, TEMPLATES, render_prompt, stop_strings
from tiny_tokenizer import build_tiny_tokenizer  # noqa: E402  (beside this file)

QUESTION = "What is $1+1$?"


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def test_qwen_boxed_goes_through_the_chat_template(tokenizer):
    prompt = render_prompt("qwen-boxed", QUESTION, tokenizer)
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{QUESTION}\n{BOXED_INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n"
    )
    # The prompt tokenizes to ids that decode back to the same text, special tokens included.
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") in ids
    assert tokenizer.decode(ids) == prompt


def test_qwen25_math_cot_puts_the_instruction_in_the_system_turn(tokenizer):
    prompt = render_prompt("qwen25-math-cot", QUESTION, tokenizer)
    assert prompt.startswith(f"<|im_start|>system\n{BOXED_INSTRUCTION}<|im_end|>\n<|im_start|>user\n{QUESTION}<|im_end|>")
    assert prompt.endswith("<|im_start|>assistant\n")
    assert "You are a helpful assistant" not in prompt


def test_plain_templates():
    assert render_prompt("abel", QUESTION) == f"Question:\n{QUESTION}\nAnswer:\nLet's think step by step.\n"
    r1 = render_prompt("r1", QUESTION)
    assert r1.endswith(f"User: {QUESTION}\nAssistant: <think>") and "<answer> answer here </answer>" in r1
    assert render_prompt("none", QUESTION) == QUESTION
    assert TEMPLATES["r1"].answer_format == "r1" and TEMPLATES["qwen-boxed"].answer_format == "boxed"


def test_stop_strings(tokenizer):
    assert stop_strings("qwen-boxed", tokenizer) == ["<|im_end|>", "<|endoftext|>"]
    assert stop_strings("r1", tokenizer) == ["</answer>", "<|endoftext|>"]
    assert stop_strings("abel") == ["\nQuestion:"]
    assert stop_strings("none") == []


def test_chat_template_errors_name_the_fix():
    with pytest.raises(ValueError, match="chat template"):
        render_prompt("qwen-boxed", QUESTION, build_tiny_tokenizer(chat_template=None))
    with pytest.raises(ValueError, match="no tokenizer"):
        render_prompt("qwen25-math-cot", QUESTION)
    with pytest.raises(ValueError, match="unknown prompt template 'llama3'"):
        render_prompt("llama3", QUESTION)
