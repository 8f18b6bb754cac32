"""A tiny random Qwen2 model with a byte-level BPE tokenizer, saved as a Hugging Face directory."""

from __future__ import annotations

import os

import torch

TRAIN_TEXT = [
    "The answer is 42. Let's think step by step.",
    "Compute 3 + 5 = 8, then multiply by 2 to get 16.",
    "Question: what is the square root of 81? Answer: 9.",
    "Please reason step by step, and put your final answer within \\boxed{}.",
] * 20


def build_tiny_model(path: str, *, vocab_size: int = 512, seed: int = 0, tie_word_embeddings: bool = False) -> str:
    """Write config, random fp32 weights and a tokenizer to `path`; returns `path`."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    os.makedirs(path, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TRAIN_TEXT, vocab_size=vocab_size - 1, min_frequency=1, special_tokens=["<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                        pad_token="<|endoftext|>")
    tokenizer.save_pretrained(path)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen2Config(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=tie_word_embeddings, eos_token_id=eos, pad_token_id=eos,
                         bos_token_id=eos)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # larger-than-default weights so sampling is not flat
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.2)
    model.save_pretrained(path)
    return path
