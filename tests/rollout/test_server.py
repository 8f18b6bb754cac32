"""The built-in rollout server over real HTTP: generation against a transformers reference, controls, auth."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from rollout_helpers import SERVER_TOKEN, ServerProcess, http_json


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


PROMPTS = [[5, 17, 200, 33], [90, 1, 7, 250, 300, 12, 44], [3]]


def reference_greedy(model, prompt, steps):
    ids = list(prompt)
    logprobs = []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([ids])).logits[0, -1]
            token = int(logits.argmax())
            logprobs.append(float(torch.log_softmax(logits, -1)[token]))
            ids.append(token)
    return ids[len(prompt):], logprobs


def test_greedy_batch_matches_transformers(server, hf):
    model, _ = hf
    status, out = http_json(server.url + "/generate", {
        "input_ids": PROMPTS, "return_logprob": True, "logprob_start_len": 0,
        "sampling_params": {"max_new_tokens": 6, "temperature": 0.0, "ignore_eos": True}})
    assert status == 200 and isinstance(out, list) and len(out) == len(PROMPTS)
    for prompt, item in zip(PROMPTS, out):
        ids, logprobs = reference_greedy(model, prompt, 6)
        assert item["output_ids"] == ids
        meta = item["meta_info"]
        assert [e[1] for e in meta["output_token_logprobs"]] == ids
        assert torch.allclose(torch.tensor([e[0] for e in meta["output_token_logprobs"]]), torch.tensor(logprobs), atol=1e-4)
        assert meta["finish_reason"] == {"type": "length", "length": 6}
        assert meta["prompt_tokens"] == len(prompt) and meta["completion_tokens"] == 6
        assert meta["cached_tokens"] == 0 and meta["weight_version"] == "default" and meta["e2e_latency"] > 0
        # input-token log-probs of the prompt itself
        with torch.no_grad():
            ref = torch.log_softmax(model(torch.tensor([prompt])).logits[0, :-1], -1)
        ref_lp = ref.gather(-1, torch.tensor(prompt[1:]).unsqueeze(-1)).squeeze(-1)
        entries = meta["input_token_logprobs"]
        assert len(entries) == len(prompt) and entries[0][0] is None and [e[1] for e in entries] == prompt
        if len(prompt) > 1:
            assert torch.allclose(torch.tensor([e[0] for e in entries[1:]]), ref_lp, atol=1e-4)


def test_logprob_start_len_and_temperature_scaling(server, hf):
    model, _ = hf
    prompt = PROMPTS[1]
    status, out = http_json(server.url + "/generate", {
        "input_ids": prompt, "return_logprob": True, "logprob_start_len": 3,
        "sampling_params": {"max_new_tokens": 3, "temperature": 0.7, "sampling_seed": 1}})
    assert status == 200 and isinstance(out, dict)
    entries = out["meta_info"]["input_token_logprobs"]
    assert [e[1] for e in entries] == prompt[3:]
    full = prompt + out["output_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([full])).logits[0, :-1] / 0.7
    ref = torch.log_softmax(logits, -1).gather(-1, torch.tensor(full[1:]).unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(torch.tensor([e[0] for e in entries]), ref[2:len(prompt) - 1], atol=1e-4)
    got = torch.tensor([e[0] for e in out["meta_info"]["output_token_logprobs"]])
    assert torch.allclose(got, ref[len(prompt) - 1:], atol=1e-4)


def test_n_samples_seed_and_top_k(server):
    body = {"input_ids": PROMPTS[0], "sampling_params": {"max_new_tokens": 8, "n": 4, "sampling_seed": 7, "ignore_eos": True}}
    status, first = http_json(server.url + "/generate", body)
    _, again = http_json(server.url + "/generate", body)
    assert status == 200 and len(first) == 4 and [r["index"] for r in first] == [0, 1, 2, 3]
    assert [r["output_ids"] for r in first] == [r["output_ids"] for r in again]  # sampling_seed reproduces
    assert len({tuple(r["output_ids"]) for r in first}) > 1  # the n samples differ
    _, greedy = http_json(server.url + "/generate", {"input_ids": PROMPTS[0], "sampling_params": {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True}})
    _, top1 = http_json(server.url + "/generate", {"input_ids": PROMPTS[0], "sampling_params": {"max_new_tokens": 8, "top_k": 1, "ignore_eos": True}})
    _, tiny_p = http_json(server.url + "/generate", {"input_ids": PROMPTS[0], "sampling_params": {"max_new_tokens": 8, "top_p": 1e-6, "ignore_eos": True}})
    _, min_p = http_json(server.url + "/generate", {"input_ids": PROMPTS[0], "sampling_params": {"max_new_tokens": 8, "min_p": 1.0, "ignore_eos": True}})
    assert top1["output_ids"] == greedy["output_ids"] == tiny_p["output_ids"] == min_p["output_ids"]


def test_stop_conditions_and_text(server, hf):
    model, tokenizer = hf
    base = {"text": "The answer is", "sampling_params": {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True}}
    status, free = http_json(server.url + "/generate", base)
    assert status == 200 and free["text"] == tokenizer.decode(free["output_ids"], skip_special_tokens=True)
    third = free["output_ids"][2]
    _, by_id = http_json(server.url + "/generate", {**base, "sampling_params": {**base["sampling_params"], "stop_token_ids": [third]}})
    assert by_id["output_ids"] == free["output_ids"][:3]
    assert by_id["meta_info"]["finish_reason"] == {"type": "stop", "matched": third}
    stop_text = free["text"][3:5]
    assert stop_text
    _, by_text = http_json(server.url + "/generate", {**base, "sampling_params": {**base["sampling_params"], "stop": [stop_text]}})
    assert by_text["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop_text}
    assert by_text["text"] == free["text"][:free["text"].find(stop_text)]
    assert free["output_ids"][:len(by_text["output_ids"])] == by_text["output_ids"]
    eos = tokenizer.eos_token_id
    _, eos_stop = http_json(server.url + "/generate", {**base, "sampling_params": {"max_new_tokens": 12, "temperature": 0, "stop_token_ids": [], "ignore_eos": False}})
    ids = eos_stop["output_ids"]
    assert (eos in ids) == (eos_stop["meta_info"]["finish_reason"]["type"] == "stop")
    _, zero = http_json(server.url + "/generate", {**base, "sampling_params": {"max_new_tokens": 0}})
    assert zero["output_ids"] == [] and zero["meta_info"]["finish_reason"] == {"type": "length", "length": 0}


def test_bad_requests_get_clear_errors(server):
    status, out = http_json(server.url + "/generate", {"input_ids": [1, 2], "sampling_params": {"frequency_penalty": 0.5}})
    assert status == 400 and "frequency_penalty" in out["message"]
    status, out = http_json(server.url + "/generate", {"input_ids": [1, 99999]})
    assert status == 400 and "outside the vocabulary" in out["message"]
    status, out = http_json(server.url + "/generate", {"input_ids": [1], "sampling_params": {"top_p": 0}})
    assert status == 400 and "top_p" in out["message"]
    status, out = http_json(server.url + "/generate", {"sampling_params": {}})
    assert status == 400 and "text or input_ids" in out["message"]


def test_concurrent_requests_are_batched(server):
    url = server.url
    assert http_json(url + "/pause_generation", {"mode": "in_place"}, token=SERVER_TOKEN)[0] == 200
    before = http_json(url + "/server_info")[1]["batches_run"]
    results = [None] * 5

    def call(i):
        results[i] = http_json(url + "/generate", {"input_ids": PROMPTS[i % 3], "sampling_params": {"max_new_tokens": 3, "n": 2}})

    threads = [threading.Thread(target=call, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while http_json(url + "/server_info")[1]["queued_requests"] < 5:
        assert time.monotonic() < deadline, "requests did not reach the server's queue"
        time.sleep(0.05)
    assert http_json(url + "/continue_generation", {}, token=SERVER_TOKEN)[0] == 200
    for t in threads:
        t.join(60)
    info = http_json(url + "/server_info")[1]
    assert all(r[0] == 200 and len(r[1]) == 2 for r in results)
    assert info["batches_run"] == before + 1 and info["recent_batch_sequences"][-1] == 10


def test_control_endpoints(server):
    url = server.url
    assert http_json(url + "/health")[0] == 200
    assert http_json(url + "/health_generate")[0] == 200
    status, info = http_json(url + "/model_info")
    assert status == 200 and info["is_generation"] and info["model_type"] == "qwen2" and "weight_version" in info
    assert http_json(url + "/flush_cache", {}, token=SERVER_TOKEN)[0] == 200
    for path in ("/release_memory_occupation", "/resume_memory_occupation"):
        status, out = http_json(url + path, {"tags": ["weights", "kv_cache"]}, token=SERVER_TOKEN)
        assert status == 200 and out["success"]
    status, out = http_json(url + "/pause_generation", {"mode": "sideways"}, token=SERVER_TOKEN)
    assert status == 400 and "mode" in out["message"]
    status, out = http_json(url + "/update_weight_version", {"new_version": "v-test"}, token=SERVER_TOKEN)
    assert status == 200 and http_json(url + "/model_info")[1]["weight_version"] == "v-test"
    _, gen = http_json(url + "/generate", {"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 1}})
    assert gen["meta_info"]["weight_version"] == "v-test"
    http_json(url + "/update_weight_version", {"new_version": "default"}, token=SERVER_TOKEN)


def test_admin_endpoints_need_the_token(server, tiny_model_dir):
    url = server.url
    body = {"serialized_named_tensors": ["AAAA"], "load_format": "flattened_bucket"}
    status, out = http_json(url + "/update_weights_from_tensor", body)
    assert status == 401 and "token" in out["message"]
    status, out = http_json(url + "/update_weights_from_tensor", body, token="wrong")
    assert status == 401
    status, out = http_json(url + "/update_weights_from_disk", {"model_path": tiny_model_dir}, token="wrong")
    assert status == 401
    status, out = http_json(url + "/update_weights_from_disk", {"model_path": tiny_model_dir + "/nope"}, token=SERVER_TOKEN)
    assert status == 400 and "nope" in out["message"]


def test_tensor_endpoint_disabled_without_token(tiny_model_dir):
    proc = ServerProcess(tiny_model_dir, token=None)
    try:
        for path, body in [("/update_weights_from_tensor", {"serialized_named_tensors": ["AAAA"]}),
                           ("/update_weights_from_disk", {"model_path": tiny_model_dir}),
                           ("/update_weight_version", {"new_version": "x"}), ("/pause_generation", {"mode": "abort"})]:
            status, out = http_json(proc.url + path, body)
            assert status == 403 and "MEGARL_SERVE_TOKEN" in out["message"], (path, out)
        assert http_json(proc.url + "/health")[0] == 200
    finally:
        proc.stop()


def test_special_token_stop_strings_match_by_token_id(tiny_model_dir):
    """A stop string that is one special token never shows in text decoded with
    skip_special_tokens, so the engine matches it by token id (and still matches other strings in
    the text)."""
    from megarl.rollout.engine import GenerationEngine, SequenceRequest
    from megarl.rollout.protocol import SamplingParams

    engine = GenerationEngine(tiny_model_dir)
    tok = engine.tokenizer
    special = next(t for t in tok.all_special_tokens if engine.decode(tok.encode(t, add_special_tokens=False)) == "")
    special_id = tok.encode(special, add_special_tokens=False)[0]
    sampling = SamplingParams.from_request({"stop": [special, "ab"], "max_new_tokens": 8})
    by_id, by_text = engine._stop_plan(sampling)
    assert by_id == {special_id: special} and by_text == ["ab"]
    req = SequenceRequest(input_ids=[1, 2], sampling=sampling)
    other = next(i for i in range(50) if i not in engine.eos_token_ids and i != special_id and engine.decode([i]) and "ab" not in engine.decode([i]))
    assert engine._check_finish(req, [other, special_id]) == ({"type": "stop", "matched": special}, None)
    assert engine._check_finish(req, [other]) == (None, None)
    # Shown when special tokens are not skipped: then it is an ordinary text match.
    shown = SamplingParams.from_request({"stop": [special], "skip_special_tokens": False})
    assert engine._stop_plan(shown) == ({}, [special])
