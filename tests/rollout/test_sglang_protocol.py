"""Protocol conformance: megarl's requests and the built-in server's responses against SGLang's schema.

When the `sglang` package is installed (`pip install --no-deps sglang msgspec` is enough; nothing
of SGLang is imported), the JSON is validated with SGLang's generated HTTP schema
(`sglang/api/v1/api_types.py`, loaded by file path) and the weight-update bodies are checked
against the request classes in `sglang/srt/managers/io_struct.py` (read with `ast`). Without it,
the same payloads are checked against the field lists below (DOC_SAMPLING, DOC_META), copied from
SGLang 0.5.23's `sglang/srt/sampling/sampling_params.py` and the /generate response's `meta_info`
(`sglang/srt/managers/tokenizer_manager.py`).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys

import pytest
import torch
from rollout_helpers import http_json

from megarl.rollout.client import RolloutClient, SamplingParams
from megarl.rollout.weight_sync import (disk_update_body, distributed_update_body, init_group_body, tensor_update_body,
                                        version_body)


def sglang_dir() -> str | None:
    spec = importlib.util.find_spec("sglang")  # finds the package without running its __init__
    return spec.submodule_search_locations[0] if spec and spec.submodule_search_locations else None


def load_api_types():
    root = sglang_dir()
    path = os.path.join(root, "api", "v1", "api_types.py") if root else None
    if not path or not os.path.exists(path) or importlib.util.find_spec("msgspec") is None:
        return None
    spec = importlib.util.spec_from_file_location("sglang_api_types_v1", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def io_struct_fields(class_name: str) -> tuple[set[str], set[str]]:
    """(all fields, required fields) of a request class in sglang's io_struct.py, read without importing it."""
    tree = ast.parse(open(os.path.join(sglang_dir(), "srt", "managers", "io_struct.py")).read())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            fields = [s for s in node.body if isinstance(s, ast.AnnAssign)]
            return {f.target.id for f in fields}, {f.target.id for f in fields if f.value is None}
    raise AssertionError(f"{class_name} not found in sglang io_struct.py")


API = load_api_types()
needs_sglang = pytest.mark.skipif(API is None, reason="sglang (and msgspec) not installed: pip install --no-deps sglang msgspec")

# SGLang 0.5.x's fields (sampling_params.py's SamplingParams, tokenizer_manager.py's /generate meta_info), used with or
# without the sglang package.
DOC_SAMPLING = {"max_new_tokens", "temperature", "top_p", "top_k", "min_p", "stop", "stop_token_ids", "n", "ignore_eos",
                "skip_special_tokens", "no_stop_trim", "sampling_seed"}
DOC_META = {"id", "finish_reason", "prompt_tokens", "completion_tokens", "cached_tokens", "weight_version", "e2e_latency"}


def client_body():
    sampling = SamplingParams(max_new_tokens=4, temperature=0.8, top_p=0.9, top_k=20, min_p=0.01, stop=["\n\n"],
                              stop_token_ids=[2], sampling_seed=3)
    return RolloutClient(["http://127.0.0.1:1"]).request_body([1, 2, 3], sampling, n=2)


def responses(server) -> list:
    out = []
    for body in (client_body(), {"input_ids": [[1, 2, 3], [4, 5]], "return_logprob": True, "logprob_start_len": 0,
                                  "return_text_in_logprobs": True, "sampling_params": {"max_new_tokens": 3, "stop": " "}},
                 {"text": "The answer", "sampling_params": {"max_new_tokens": 2}}):
        status, result = http_json(server.url + "/generate", body)
        assert status == 200, result
        out.extend(result if isinstance(result, list) else [result])
    return out


def test_documented_fields(server):
    body = client_body()
    assert set(body["sampling_params"]) <= DOC_SAMPLING and body["sampling_params"]["n"] == 2
    for item in responses(server):
        assert set(item) >= {"text", "output_ids", "meta_info"}
        assert set(item["meta_info"]) >= DOC_META
        finish = item["meta_info"]["finish_reason"]
        assert finish["type"] in ("stop", "length", "abort")
        for entry in item["meta_info"].get("output_token_logprobs", []):
            assert len(entry) == 3 and isinstance(entry[0], float) and isinstance(entry[1], int)


@needs_sglang
def test_generate_request_and_response_validate_with_sglang_schema(server):
    request = API.GenerateRequest.from_json_value(client_body())
    assert request.sampling_params.n == 2 and request.input_ids == [1, 2, 3]
    assert API.GenerateRequest.from_json_value(client_body()).to_json_value()["sampling_params"]["top_k"] == 20
    for item in responses(server):
        decoded = API.GenerateResponse.from_json_value(item)
        meta = decoded.meta_info
        assert meta.weight_version == "default" and meta.prompt_tokens > 0
        assert isinstance(meta.finish_reason, (API.FinishStop, API.FinishLength))
        if item["meta_info"].get("output_token_logprobs"):
            assert all(isinstance(e, API.LogprobEntry) for e in meta.output_token_logprobs)
    # the schema is strict where megarl must be: an unknown sampling field is refused
    with pytest.raises(API.JsonContractError):
        API.SamplingParams.from_json_value({"max_new_token": 3})


@needs_sglang
@pytest.mark.parametrize("class_name, body", [
    ("UpdateWeightsFromTensorReqInput", tensor_update_body(["payload-rank0", "payload-rank1"])),
    ("UpdateWeightsFromDistributedReqInput", distributed_update_body([("w", torch.zeros(2, 3, dtype=torch.bfloat16))], "g")),
    ("InitWeightsUpdateGroupReqInput", init_group_body("127.0.0.1", 1234, 1, 3, "g", "gloo")),
    ("UpdateWeightFromDiskReqInput", disk_update_body("/tmp/w")),
    ("UpdateWeightVersionReqInput", version_body("3")),
])
def test_weight_update_bodies_match_sglang_io_struct(class_name, body):
    fields, required = io_struct_fields(class_name)
    assert set(body) <= fields, f"{class_name} has no fields {set(body) - fields}"
    assert required <= set(body), f"{class_name} needs {required - set(body)}"
    if "dtypes" in body:
        assert getattr(torch, body["dtypes"][0]) == torch.bfloat16  # SGLang does getattr(torch, dtype)
