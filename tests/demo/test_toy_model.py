"""The CPU demo's toy base model: tokenizer round trip, a (tiny-budget) build, loading, caching."""

import json

import pytest
import torch

from megarl.demo.toy_model import EOS_TOKEN, PAD_TOKEN, ToyModelSettings, build_tokenizer, build_toy_model, evaluate_toy_model
from megarl.demo.toy_task import pretraining_documents, toy_problems
from megarl.models.spec import ModelSpec

# A build small enough for a test: a few optimizer steps on a handful of documents.
TINY_BUILD = dict(steps=4, batch_size=8, warmup_steps=2, show_progress=False)


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    return build_toy_model(tmp_path_factory.mktemp("toy_cache"), **TINY_BUILD)


def test_tokenizer_round_trips_and_splits_digits(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = build_tokenizer(pretraining_documents(300, seed=0), vocab_size=400)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    texts = pretraining_documents(20, seed=5) + ["Unseen text: héllo ∑ x^2 {}\\boxed{-3.5}\n\n  tabs\t!"]
    for text in texts:
        ids = loaded(text, add_special_tokens=False)["input_ids"]
        assert loaded.decode(ids) == text
        assert ids == tokenizer.encode(text, add_special_tokens=False)
    assert [loaded.decode([i]) for i in loaded.encode("1234", add_special_tokens=False)] == ["1", "2", "3", "4"]
    assert loaded.eos_token == EOS_TOKEN and loaded.pad_token == PAD_TOKEN
    assert loaded.eos_token_id != loaded.pad_token_id


def test_build_produces_a_loadable_hf_dir_that_megarl_accepts(toy_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "toy_build.json"):
        assert (toy_dir / name).is_file(), name
    assert toy_dir.name.startswith("toy-arith-")
    tokenizer = AutoTokenizer.from_pretrained(toy_dir)
    model = AutoModelForCausalLM.from_pretrained(toy_dir, dtype=torch.float32)
    assert model.config.model_type == "qwen2"
    assert model.config.vocab_size == len(tokenizer)
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    ids = tokenizer("Tom has 12 pens and buys 30 more. How many pens does Tom have now?\n", return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape == (1, ids["input_ids"].shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()

    spec = ModelSpec.from_hf(toy_dir)
    assert spec.model_type == "qwen2" and spec.tie_word_embeddings
    spec.check_layout(tp=2, pp=2)  # the demo runs at actor.tp=2 and in the TP2xPP2 tests
    stats = json.loads((toy_dir / "toy_build.json").read_text())
    assert stats["settings"]["steps"] == TINY_BUILD["steps"]


def test_second_call_reuses_the_cache(toy_dir):
    marker = (toy_dir / "toy_build.json").stat().st_mtime_ns
    again = build_toy_model(toy_dir.parent, **TINY_BUILD)
    assert again == toy_dir
    assert (toy_dir / "toy_build.json").stat().st_mtime_ns == marker
    assert not [p for p in toy_dir.parent.iterdir() if ".tmp-" in p.name]  # no staging leftovers
    other = build_toy_model(toy_dir.parent, **dict(TINY_BUILD, seed=1))
    assert other != toy_dir and other.parent == toy_dir.parent


def test_settings_change_the_cache_key_but_threads_do_not():
    base = ToyModelSettings()
    assert ToyModelSettings(steps=base.steps + 1).cache_key() != base.cache_key()
    assert ToyModelSettings(boxed_fraction=0.5).cache_key() != base.cache_key()
    assert ToyModelSettings(threads=base.threads + 1).cache_key() == base.cache_key()


def test_bad_settings_fail_with_clear_errors(tmp_path):
    with pytest.raises(TypeError, match="hidden_sise"):
        build_toy_model(tmp_path, hidden_sise=64)
    with pytest.raises(ValueError, match="num_kv_heads"):
        ToyModelSettings(num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="loss_on"):
        ToyModelSettings(loss_on="prompt")


def test_evaluation_runs_the_strict_grader(toy_dir):
    result = evaluate_toy_model(toy_dir, toy_problems("heldout", 4, seed=0), k=2, max_new_tokens=8)
    assert result.problems == 4 and result.k == 2
    for value in (result.greedy_accuracy, result.greedy_boxed_rate, result.pass_at_k, result.sample_accuracy):
        assert 0.0 <= value <= 1.0


def test_grade_completions_is_strict_about_the_box():
    from megarl.demo.toy_model import grade_completions

    completions = [
        "We add: 23 + 45 = 68. The answer is \\boxed{68}.",
        "We add: 23 + 45 = 68. The answer is 68.",
        "We add: 23 + 45 = 69. The answer is \\boxed{69}.",
        "We add: 23 + 45",
    ]
    assert grade_completions(completions, ["68"] * 4) == [
        (True, True, True),
        (False, False, True),
        (False, True, False),
        (False, False, False),
    ]
