"""The built-in server under hostile or careless requests: one request never takes it down."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from inprocess_server import InProcessServer
from rollout_helpers import SERVER_TOKEN, ServerProcess, http_json

CONTEXT = 512  # the tiny test model's max_position_embeddings


@pytest.fixture(scope="module")
def server(tiny_model_dir, request):
    """`megarl serve` in a subprocess, with its default limits."""
    proc = ServerProcess(tiny_model_dir)
    request.addfinalizer(proc.stop)
    return proc


@pytest.fixture(scope="module")
def inproc(tiny_model_dir, request):
    """A server in this process, whose engine the tests slow down or wedge."""
    in_process = InProcessServer(tiny_model_dir, max_batch_sequences=64)
    request.addfinalizer(in_process.stop)
    return in_process


def generate(url, body):
    return http_json(url + "/generate", body)


def test_five_mb_prompt_gets_a_400_within_a_second_and_others_are_served(server):
    answers = {}

    def good():
        answers["good"] = generate(server.url, {"input_ids": [5, 6, 7], "sampling_params": {"max_new_tokens": 4}})

    worker = threading.Thread(target=good)
    started = time.monotonic()
    worker.start()
    status, out = generate(server.url, {"text": "x" * 5_000_000, "sampling_params": {"max_new_tokens": 4}})
    assert time.monotonic() - started < 1.0
    assert status == 400 and f"context length ({CONTEXT} tokens)" in out["message"], out
    worker.join(30)
    assert answers["good"][0] == 200 and len(answers["good"][1]["output_ids"]) == 4
    status, out = generate(server.url, {"input_ids": [5] * CONTEXT})
    assert status == 400 and f"The input ({CONTEXT} tokens) is longer than the model's context length ({CONTEXT} tokens)" in out["message"]
    status, out = generate(server.url, {"input_ids": [5] * 100, "sampling_params": {"max_new_tokens": 500}})
    assert status == 400 and f"maximum context length of {CONTEXT} tokens" in out["message"] and "600" in out["message"]
    status, out = generate(server.url, {"input_ids": [[5, 6], [5] * 600]})
    assert status == 400 and out["message"].startswith("prompt 1 of 2:")  # a batch in one request names the prompt
    assert generate(server.url, {"input_ids": [5] * 100, "sampling_params": {"max_new_tokens": 8}})[0] == 200


def test_one_bad_request_in_a_batch_fails_alone(server):
    bodies = [{"input_ids": [3 + i, 40, 41], "sampling_params": {"max_new_tokens": 3, "sampling_seed": i}} for i in range(12)]
    bodies[4]["sampling_params"]["sampling_seed"] = 2**70  # outside SGLang's range: refused
    bodies[7]["sampling_params"]["sampling_seed"] = 2**62  # in range (it overflowed torch's seed before)
    assert http_json(server.url + "/pause_generation", {"mode": "in_place"}, token=SERVER_TOKEN)[0] == 200
    before = http_json(server.url + "/server_info")[1]["batches_run"]
    results = [None] * 12
    try:
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, generate(server.url, bodies[i]))) for i in range(12)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while http_json(server.url + "/server_info")[1]["queued_requests"] < 11:
            assert time.monotonic() < deadline, "requests did not reach the queue"
            time.sleep(0.05)
    finally:
        assert http_json(server.url + "/continue_generation", {}, token=SERVER_TOKEN)[0] == 200
    for thread in threads:
        thread.join(60)
    assert [r[0] for r in results] == [200] * 4 + [400] + [200] * 7
    assert "sampling_seed" in results[4][1]["message"] and "2**63" in results[4][1]["message"]
    assert all(len(r[1]["output_ids"]) == 3 for i, r in enumerate(results) if i != 4)
    info = http_json(server.url + "/server_info")[1]
    assert info["batches_run"] == before + 1 and info["recent_batch_sequences"][-1] == 11  # the 11 good ones, together


@pytest.mark.parametrize("field,value", [("temperature", float("nan")), ("temperature", float("inf")),
                                         ("top_p", float("nan")), ("min_p", float("nan")), ("temperature", "hot"),
                                         ("n", 1.5), ("sampling_seed", "7")])
def test_non_finite_or_mistyped_sampling_values_are_refused(server, field, value):
    status, out = generate(server.url, {"input_ids": [5, 6], "sampling_params": {field: value, "max_new_tokens": 2}})
    assert status == 400 and f"sampling_params.{field}" in out["message"], out


def test_n_is_split_into_batches_of_max_batch_sequences_and_capped_per_request(server):
    limit = http_json(server.url + "/server_info")[1]["max_batch_sequences"]
    before = http_json(server.url + "/server_info")[1]["batches_run"]
    status, out = generate(server.url, {"input_ids": [5, 6, 7], "sampling_params": {"n": 2000, "max_new_tokens": 1}})
    assert status == 200 and len(out) == 2000
    info = http_json(server.url + "/server_info")[1]
    sizes = info["recent_batch_sequences"][-(info["batches_run"] - before):]
    assert sum(sizes) == 2000 and max(sizes) <= limit, sizes
    status, out = generate(server.url, {"input_ids": [[5, 6], [7, 8]], "sampling_params": {"n": 2049, "max_new_tokens": 1}})
    assert status == 400 and "4098 sequences" in out["message"] and "max_request_sequences=4096" in out["message"]


def test_client_disconnect_stops_the_work(inproc):
    inproc.forward_delay_s = 0.05  # 400 decode steps would take 20 s
    try:
        body = json.dumps({"input_ids": [5, 6, 7], "sampling_params": {"max_new_tokens": 400, "ignore_eos": True}}).encode()
        sock = socket.create_connection(("127.0.0.1", inproc.port))
        sock.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        deadline = time.monotonic() + 10
        while not inproc.server.scheduler.running_batch:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.3)
        sock.close()  # the client goes away
        closed = time.monotonic()
        while inproc.server.scheduler.running_batch:
            assert time.monotonic() - closed < 2.0, "the worker kept generating for a client that left"
            time.sleep(0.02)
        calls = inproc.forward_calls
        time.sleep(0.3)
        assert inproc.forward_calls == calls
    finally:
        inproc.forward_delay_s = 0.0
    assert generate(inproc.url, {"input_ids": [5, 6], "sampling_params": {"max_new_tokens": 2}})[0] == 200


def test_request_past_its_deadline_is_cut_short(inproc):
    inproc.forward_delay_s = 0.05
    inproc.server.request_timeout_s = 1.0
    try:
        started = time.monotonic()
        status, out = generate(inproc.url, {"input_ids": [[5, 6, 7], [8, 9]], "sampling_params": {"max_new_tokens": 400, "ignore_eos": True}})
        assert time.monotonic() - started < 3.0
    finally:
        inproc.forward_delay_s = 0.0
        inproc.server.request_timeout_s = 600.0
    assert status == 200 and all(item["meta_info"]["finish_reason"]["type"] == "abort" for item in out)
    assert "limit of 1 s per request" in out[0]["meta_info"]["finish_reason"]["message"]
    assert 0 < len(out[0]["output_ids"]) < 400


def test_health_reports_a_wedged_worker(inproc):
    inproc.server.stall_timeout_s = 0.5
    inproc.gate.clear()  # the next forward pass blocks, as a worker stuck in one step would
    thread = threading.Thread(target=generate, args=(inproc.url, {"input_ids": [5, 6], "sampling_params": {"max_new_tokens": 2}}))
    try:
        assert http_json(inproc.url + "/health")[0] == 200
        thread.start()
        deadline = time.monotonic() + 10
        while http_json(inproc.url + "/health")[0] == 200:
            assert time.monotonic() < deadline, "/health kept answering 200 for a stuck worker"
            time.sleep(0.1)
        status, text = http_json(inproc.url + "/health")
        assert status == 503 and "no progress" in text
    finally:
        inproc.gate.set()
        inproc.server.stall_timeout_s = 300.0
    thread.join(30)
    assert http_json(inproc.url + "/health")[0] == 200


def test_model_path_is_taken_literally(tiny_model_dir, tmp_path):
    from safetensors.torch import save_file

    from megarl.rollout.engine import GenerationEngine

    engine = GenerationEngine(tiny_model_dir)
    weights = {name: tensor.detach().clone().contiguous() for name, tensor in engine.model.state_dict().items()}
    (tmp_path / "w1").mkdir()
    save_file(weights, str(tmp_path / "w1" / "model.safetensors"))
    with pytest.raises(FileNotFoundError, match=r"w\[12\]"):  # a glob would have found w1
        engine.load_weights_from_disk(str(tmp_path / "w[12]"))
    with pytest.raises(FileNotFoundError):
        engine.load_weights_from_disk(str(tmp_path / "w*"))
    literal = tmp_path / "w*[x]"
    literal.mkdir()
    save_file(weights, str(literal / "model.safetensors"))
    assert engine.load_weights_from_disk(str(literal)) == len(weights)


def test_requests_sent_together_run_as_one_batch(inproc):
    """Two requests sent within the batch window share one batch (the server waits batch_window_s for
    more before it starts one); before, the first ran alone and the second waited for its longest row.
    (A 0.5 s window and 50 ms between the requests keep the test independent of the machine's load.)"""
    body = {"input_ids": [5, 6, 7], "sampling_params": {"max_new_tokens": 4, "ignore_eos": True, "n": 2}}
    batches, window = inproc.server.scheduler.batches_run, inproc.server.scheduler.batch_window_s
    inproc.server.scheduler.batch_window_s = 0.5
    results = []
    try:
        first = threading.Thread(target=lambda: results.append(generate(inproc.url, body)))
        first.start()
        time.sleep(0.05)
        results.append(generate(inproc.url, body))
        first.join()
    finally:
        inproc.server.scheduler.batch_window_s = window
    assert [status for status, _ in results] == [200, 200]
    assert inproc.server.scheduler.batches_run == batches + 1 and inproc.server.scheduler.batch_sizes[-1] == 4
