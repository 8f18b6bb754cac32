"""Pass-rate filtering (with a plain Python sample_fn as the test input), torch and DALI loaders."""

from __future__ import annotations

import pytest
import torch

from megarl.data import load_records
from megarl.data.dali_loader import DaliTokenLoader, dali_available
from megarl.data.loader import PromptLoader
from megarl.data.pass_rate import filter_by_pass_rate, measure_pass_rates, read_pass_rates, write_pass_rates
from megarl.data.token_shards import TokenShardDataset, torch_token_loader, write_token_shards
from tiny_tokenizer import build_tiny_tokenizer  # noqa: E402  (beside this file)


def scripted_sample_fn(correct_per_prompt: dict[str, int], golds: dict[str, str]):
    """Test input standing in for a model: for the prompt of problem P, returns
    correct_per_prompt[P] boxed gold answers and the rest wrong (one of them truncated)."""

    def sample(prompts: list[str], k: int):
        groups = []
        for prompt in prompts:
            problem = next(p for p in golds if p in prompt)
            good = correct_per_prompt[problem]
            group = [f"so \\boxed{{{golds[problem]}}}"] * good
            group += [("so \\boxed{-12345}", {"type": "length"})] + ["no answer"] * (k - good - 1) if good < k else []
            groups.append(group)
        return groups

    return sample


def test_measure_and_filter_pass_rates(tmp_path):
    records = load_records("math500")[:6]
    golds = {r.problem: r.answer for r in records}
    solved = {r.problem: count for r, count in zip(records, [0, 1, 2, 3, 4, 4])}
    rates = measure_pass_rates(records, scripted_sample_fn(solved, golds), k=4, template="abel", show_progress=False)
    assert [r.correct for r in rates] == [0, 1, 2, 3, 4, 4]
    assert [r.truncated for r in rates] == [1, 1, 1, 1, 0, 0]
    kept = filter_by_pass_rate(records, rates, min_rate=0.25, max_rate=0.75)
    assert [r.id for r in kept] == [r.id for r in records[1:4]]
    path = tmp_path / "pass_rates.jsonl"
    write_pass_rates(path, rates)
    assert read_pass_rates(path) == rates
    with pytest.raises(ValueError, match="expected k=4"):
        measure_pass_rates(records[:1], lambda prompts, k: [["x"]], k=4, template="none", show_progress=False)
    with pytest.raises(ValueError, match="min_rate"):
        filter_by_pass_rate(records, rates, 0.8, 0.2)


def test_prompt_loader_shards_per_rank_and_reshuffles_per_epoch():
    records = load_records("aime24")  # 30 problems
    seen = []
    for rank in range(3):
        loader = PromptLoader(records, batch_size=4, dp_rank=rank, dp_size=3, seed=1)
        loader.set_epoch(0)
        batches = list(loader)
        assert len(batches) == len(loader) == 2 and all(len(b) == 4 for b in batches)
        seen.append([r.id for b in batches for r in b])
    flat = [i for ids in seen for i in ids]
    assert len(flat) == len(set(flat)) == 24  # disjoint across ranks
    loader = PromptLoader(records, batch_size=4, dp_rank=0, dp_size=3, seed=1)
    loader.set_epoch(1)
    assert [r.id for b in loader for r in b] != seen[0]
    with pytest.raises(ValueError, match="dp_rank"):
        PromptLoader(records, batch_size=4, dp_rank=3, dp_size=3)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    tokenizer = build_tiny_tokenizer()
    out = tmp_path_factory.mktemp("shards") / "aime"
    write_token_shards(load_records("aime24")[:20], tokenizer, "qwen-boxed", out)
    return out, tokenizer


def test_token_shards_and_torch_loader(shards):
    out, tokenizer = shards
    dataset = TokenShardDataset(out)
    assert len(dataset) == 20
    index, ids = dataset[3]
    assert index == 3 and tokenizer.decode(ids.tolist()).endswith("<|im_start|>assistant\n")
    batches = list(torch_token_loader(out, batch_size=4, dp_rank=1, dp_size=2, seed=0))
    assert len(batches) == 2
    for batch in batches:
        for row, (length, record_index) in enumerate(zip(batch["lengths"], batch["indices"])):
            assert torch.equal(batch["tokens"][row, :length], dataset[int(record_index)][1])
    with pytest.raises(FileExistsError):
        write_token_shards(load_records("aime24")[:2], tokenizer, "qwen-boxed", out)


@pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI is not installed (pip install nvidia-dali-cuda120)")
def test_dali_loader_matches_the_shards(shards):
    out, _ = shards
    dataset = TokenShardDataset(out)
    epochs: list[list[list[int]]] = []
    loaders = [DaliTokenLoader(out, batch_size=3, dp_rank=rank, dp_size=2, seed=5) for rank in range(2)]
    for epoch in range(2):
        per_rank = []
        for loader in loaders:
            indices = []
            for batch in loader.epoch():
                assert batch["tokens"].shape[0] == 3
                for row in range(3):
                    record_index = int(batch["indices"][row])
                    length = int(batch["lengths"][row])
                    assert torch.equal(batch["tokens"][row, :length], dataset[record_index][1])
                    indices.append(record_index)
            assert len(indices) == 9  # 10 per shard, batch 3: three full batches
            per_rank.append(indices)
        assert not set(per_rank[0]) & set(per_rank[1])  # disjoint within an epoch
        epochs.append(per_rank)
    assert epochs[0][0] != epochs[1][0]  # a new order (and shard) in the next epoch
