"""A multi-turn sample's requests are plain SGLang `/generate` requests: the first turn's and every
continuation's body validate with SGLang's own schema (sglang/api/v1/api_types.py)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "rollout"))
from test_sglang_protocol import load_api_types  # noqa: E402

from megarl.config import ToolConfig  # noqa: E402
from megarl.rollout import multi_turn  # noqa: E402
from megarl.rollout.client import RolloutClient, SamplingParams  # noqa: E402

API = load_api_types()


@pytest.mark.skipif(API is None, reason="sglang (and msgspec) not installed: pip install --no-deps sglang msgspec")
def test_turn_requests_validate_with_sglang_schema():
    tools = multi_turn.ToolRunner(ToolConfig(enabled=True, workers=1), tokenizer=None)  # no output is tokenized here
    try:
        base = SamplingParams(max_new_tokens=64, temperature=1.0, stop=["<|im_end|>"], sampling_seed=5)
        first = multi_turn.with_tool_stop(base, tools)
        later = multi_turn.continuation_sampling(first, 17)(2, 23)
    finally:
        tools.close()
    client = RolloutClient(["http://127.0.0.1:1"])
    for body, n, new in ((client.request_body([1, 2, 3], first, 8), 8, 64), (client.request_body([1, 2, 3, 9, 9, 7], later, 1), 1, 23)):
        request = API.GenerateRequest.from_json_value(body)
        params = request.sampling_params
        assert params.n == n and params.max_new_tokens == new and params.no_stop_trim is True
        assert list(params.stop) == ["<|im_end|>", "```output"]
    assert API.GenerateRequest.from_json_value(client.request_body([1], later, 1)).sampling_params.sampling_seed != 5
