"""SGLang's weight-update session (issue 21, defect 1) and the memory of a push (likely defects 4 and 7).

SGLang 0.5.23's `SchedulerWeightUpdaterManager` refuses `update_weights_from_tensor` and
`update_weights_from_distributed` outside `begin_weight_update()` ... `end_weight_update()`. These tests
record every request megarl's `WeightPusher` sends to a real built-in server, check the order (pause,
begin, updates, end, flush, version with abort_all_requests=false, continue), and replay the requests
that reach SGLang's scheduler into SGLang's own manager class (`sglang_weight_manager`), converting each
JSON body to SGLang's request struct through pydantic as SGLang's FastAPI server does. The built-in
server's answers outside a session are compared with what SGLang's manager answers for the same calls.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from rollout_helpers import SERVER_TOKEN, http_json

from megarl.rollout import weight_sync
from megarl.rollout.weight_sync import WeightPusher, WeightSyncError, sync_peak_bytes

try:
    import pydantic

    from sglang_weight_manager import Recorder, build_manager, import_manager_module
except ImportError as err:  # pragma: no cover - CI installs sglang
    pytest.skip(f"sglang is not importable ({err}); install it as CI does: pip install --no-deps sglang==0.5.23 "
                "and the dev extra", allow_module_level=True)

# endpoint -> (SGLang manager method, request struct): the requests SGLang's scheduler hands its weight updater
MANAGER_CALLS = {
    "/begin_weight_update": ("begin_weight_update", "BeginWeightUpdateReqInput"),
    "/end_weight_update": ("end_weight_update", "EndWeightUpdateReqInput"),
    "/update_weights_from_tensor": ("update_weights_from_tensor", "UpdateWeightsFromTensorReqInput"),
    "/update_weights_from_distributed": ("update_weights_from_distributed", "UpdateWeightsFromDistributedReqInput"),
    "/init_weights_update_group": ("init_weights_update_group", "InitWeightsUpdateGroupReqInput"),
    "/update_weights_from_disk": ("update_weights_from_disk", "UpdateWeightFromDiskReqInput"),
}
UPDATE_PATH = {"tensor": "/update_weights_from_tensor", "distributed": "/update_weights_from_distributed",
               "disk": "/update_weights_from_disk"}


@pytest.fixture(scope="module")
def manager_module():
    return import_manager_module()


@pytest.fixture(scope="module")
def weights(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return [(n, t.detach().clone()) for n, t in model.state_dict().items()]


class RecordingPusher(WeightPusher):
    """megarl's pusher, unchanged, with every request it sends recorded on its way out."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent: list[tuple[str, dict]] = []

    def _post(self, server, path, body=None):
        self.sent.append((path, dict(body or {})))
        return super()._post(server, path, body)


def recorded_push(url: str, transport: str, weights, tmp_path, pushes: int = 1) -> list[tuple[str, dict]]:
    with RecordingPusher([url], transport=transport, bucket_bytes=64 << 10, token=SERVER_TOKEN,
                         disk_dir=str(tmp_path / "shared")) as pusher:
        for version in range(pushes):
            pusher.push(weights, weight_version=f"{transport}-{version}")
        return list(pusher.sent)


def sglang_request(module, class_name: str, body: dict):
    """The struct SGLang's FastAPI endpoint builds from this JSON body (pydantic, via SGLang's msgspec schema)."""
    return pydantic.TypeAdapter(getattr(module, class_name)).validate_python(body)


def replay(module, sent: list[tuple[str, dict]]) -> tuple[list, Recorder]:
    """Hand the manager-bound requests to SGLang's manager in the order megarl sent them."""
    log = Recorder()
    manager = build_manager(module, log)
    answers = []
    for path, body in sent:
        if path in MANAGER_CALLS:
            method, class_name = MANAGER_CALLS[path]
            answers.append((path, getattr(manager, method)(sglang_request(module, class_name, body))))
    return answers, log


def without_repeats(paths: list[str]) -> list[str]:
    return [p for i, p in enumerate(paths) if i == 0 or p != paths[i - 1]]


@pytest.mark.parametrize("transport", ["tensor", "distributed"])
def test_pusher_requests_replay_into_sglangs_weight_updater(server, weights, manager_module, tmp_path, transport):
    sent = recorded_push(server.url, transport, weights, tmp_path, pushes=2)
    answers, log = replay(manager_module, sent)
    refused = [(path, answer.message) for path, answer in answers if not answer.success]
    assert not refused, refused[:2]
    paths = [p for p, _ in sent if p != "/init_weights_update_group"]
    one_push = ["/pause_generation", "/begin_weight_update", UPDATE_PATH[transport], "/end_weight_update",
                "/flush_cache", "/update_weight_version", "/continue_generation"]
    assert without_repeats(paths) == one_push * 2, paths
    assert paths.count(UPDATE_PATH[transport]) >= 8  # 64 KB buckets: each push really is split
    for path, body in sent:
        if path == "/update_weight_version":  # SGLang's default (true) would abort continued partial rollouts
            assert body["abort_all_requests"] is False
    calls = [c[0] for c in log.calls]
    updates = "runner.tensor" if transport == "tensor" else "runner.load"
    assert calls.count("runner.begin") == calls.count("runner.end") == 2
    assert calls.count(updates) == paths.count(UPDATE_PATH[transport])
    first_end = calls.index("runner.end")
    assert calls.index("runner.begin") < calls.index(updates) < first_end  # every update inside the session
    assert ("runner.end", False) in log.calls  # weights were loaded in the session: no extra post-load pass


def test_updates_outside_a_session_are_refused_as_sglang_refuses_them(server, weights, manager_module, tmp_path):
    """The built-in server answers like SGLang's HTTP server (400, {"success": false, "message": ...}), with
    the messages SGLang's manager gives for the same requests."""
    sent = recorded_push(server.url, "tensor", weights[:1], tmp_path)
    tensor_body = next(body for path, body in sent if path == "/update_weights_from_tensor")
    distributed_body = {"names": ["lm_head.weight"], "dtypes": ["float32"], "shapes": [[512, 64]],
                        "group_name": "weight_update_group"}
    cases = [("/update_weights_from_tensor", tensor_body), ("/update_weights_from_distributed", distributed_body),
             ("/end_weight_update", {}), ("/begin_weight_update", {}), ("/begin_weight_update", {"selector": "all"}),
             ("/end_weight_update", {}), ("/end_weight_update", {})]
    expected, _ = replay(manager_module, cases)
    assert [a.success for _, a in expected] == [False, False, False, True, False, True, False]
    for (path, body), (_, sglang) in zip(cases, expected):
        status, got = http_json(server.url + path, body, token=SERVER_TOKEN)
        if sglang.success:
            assert status == 200 and got == {"success": True, "message": sglang.message}, (path, got)
        else:
            assert status == 400 and got == {"success": False, "message": sglang.message}, (path, got)
    status, got = http_json(server.url + "/begin_weight_update", {"selector": "both"}, token=SERVER_TOKEN)
    assert status == 400 and "selector 'both' is unknown" in got["message"]


def test_a_failed_update_still_closes_the_session(server, weights, tmp_path):
    bad = [("model.layers.0.self_attn.q_prj.weight", torch.zeros(64, 64))]
    with RecordingPusher([server.url], transport="tensor", token=SERVER_TOKEN) as pusher:
        with pytest.raises(WeightSyncError, match="unknown parameter"):
            pusher.push(bad, weight_version="bad")
        assert [p for p, _ in pusher.sent][-2:] == ["/end_weight_update", "/continue_generation"]
        pusher.push(weights, weight_version="good")  # a new session opens: the failed one was closed
    assert http_json(server.url + "/model_info")[1]["weight_version"] == "good"


def test_disk_push_writes_under_the_configured_directory_without_a_session(server, weights, manager_module, tmp_path):
    """Likely defect 7: the disk transport wrote to the trainer's local temp dir. It now writes where it is
    told (the trainer passes rollout.disk_dir, by default the run directory), and refuses to guess."""
    sent = recorded_push(server.url, "disk", weights, tmp_path)
    paths = [p for p, _ in sent]
    assert paths == ["/pause_generation", "/update_weights_from_disk", "/flush_cache", "/update_weight_version",
                     "/continue_generation"]  # SGLang's disk loader restores and post-processes by itself
    model_path = next(body["model_path"] for path, body in sent if path == "/update_weights_from_disk")
    assert model_path.startswith(str(tmp_path / "shared") + "/")
    answers, _ = replay(manager_module, sent)
    assert all(a.success for _, a in answers)
    with pytest.raises(ValueError, match="disk transport needs disk_dir"):
        WeightPusher([server.url], transport="disk", token=SERVER_TOKEN)


def test_disk_dir_defaults_to_the_run_directory():
    from megarl.config import load_config

    cfg = load_config("configs/tiny_cpu.yaml", ["run.output_dir=/shared/runs/x"], check_files=False)
    assert cfg.rollout.disk_dir is None and cfg.weight_sync_dir == "/shared/runs/x/weight_sync"
    cfg = load_config("configs/tiny_cpu.yaml", ["rollout.disk_dir=/nfs/sync"], check_files=False)
    assert cfg.weight_sync_dir == "/nfs/sync"


# ---- bucket memory (likely defect 4) ---------------------------------------------------------------------

@pytest.fixture
def made_buffers(monkeypatch):
    """Weak references to every bucket buffer the pusher allocates."""
    refs = []
    original = weight_sync._new_bucket_buffer

    def tracking(nbytes, *, shared):
        buffer = original(nbytes, shared=shared)
        refs.append(weakref.ref(buffer))
        return buffer

    monkeypatch.setattr(weight_sync, "_new_bucket_buffer", tracking)
    return refs


def alive(refs) -> int:
    gc.collect()
    return sum(r() is not None for r in refs)


@pytest.mark.parametrize("transport", ["tensor", "distributed"])
def test_no_bucket_outlives_its_push(server, weights, made_buffers, transport):
    bucket = 64 << 10
    with WeightPusher([server.url], transport=transport, bucket_bytes=bucket, token=SERVER_TOKEN) as pusher:
        for version in range(2):
            report = pusher.push(weights, weight_version=f"{transport}-{version}")
            assert made_buffers and alive(made_buffers) == 0, "bucket buffers still allocated after the push"
    largest = max(t.numel() * t.element_size() for _, t in weights)
    model = sum(t.numel() * t.element_size() for _, t in weights)
    assert 0 < report.peak_bucket_bytes <= sync_peak_bytes(transport, bucket_bytes=bucket, largest_tensor_bytes=largest,
                                                           model_bytes=model, gpu=False)


@pytest.mark.parametrize("transport, kept", [("tensor", "model"), ("distributed", "bucket")])
def test_gpu_bookkeeping_keeps_ipc_buckets_until_the_session_ends(server, weights, made_buffers, monkeypatch,
                                                                  transport, kept):
    """The pusher's GPU rules with CPU buffers (no GPU here): `on_gpu()` answers True inside weight_sync only.
    A CUDA-IPC bucket may still be read after the server answered, so it is kept until /end_weight_update
    and /flush_cache answered, then dropped; a broadcast bucket is dropped when its broadcast returned."""
    monkeypatch.setattr(weight_sync, "on_gpu", lambda: True)
    at_end = []

    class Pusher(WeightPusher):
        def _post(self, server, path, body=None):
            if path == "/end_weight_update":
                at_end.append(alive(made_buffers))
            return super()._post(server, path, body)

    bucket = 64 << 10
    with Pusher([server.url], transport=transport, bucket_bytes=bucket, token=SERVER_TOKEN) as pusher:
        assert pusher.buffer_pool is None
        report = pusher.push(weights, weight_version=f"gpu-{transport}")
    assert alive(made_buffers) == 0
    largest = max(t.numel() * t.element_size() for _, t in weights)
    model = sum(t.numel() * t.element_size() for _, t in weights)
    planned = sync_peak_bytes(transport, bucket_bytes=bucket, largest_tensor_bytes=largest, model_bytes=model, gpu=True)
    if kept == "model":
        assert at_end == [report.num_buckets] and report.peak_bucket_bytes == model == planned
    else:
        assert at_end == [0] and report.peak_bucket_bytes == largest <= planned


def test_memory_plan_counts_the_sync_peak(tmp_path):
    import json

    from megarl.config import load_config
    from megarl.launch.layout import LaunchOptions, plan_layout
    from megarl.launch.memory import GIB, Shape, estimate_memory
    from megarl.models.spec import ModelSpec

    (tmp_path / "m").mkdir()
    qwen7b = dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", vocab_size=152064, hidden_size=3584,
                  intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                  max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False)
    (tmp_path / "m" / "config.json").write_text(json.dumps(qwen7b))
    spec = ModelSpec.from_hf(tmp_path / "m")
    rows = {}
    for transport in ("tensor", "distributed", "disk"):
        cfg = load_config("configs/simplerl_zoo_qwen2.5_7b.yaml", [f"model.path={tmp_path / 'm'}",
                                                                   f"rollout.transport={transport}"], check_files=False)
        layout = plan_layout(cfg, LaunchOptions(nodes=1, colocate=True) if transport == "tensor" else
                             LaunchOptions(nodes=2, rollout_nodes=1))
        est = estimate_memory(cfg, spec, layout, gpu_gib=80)
        rows[transport] = next(r.gib for r in est.trainer if r.component == "weight sync")
        assert "| trainer | weight sync |" in est.table()
    assert cfg.model.dtype == "bf16" and cfg.rollout.bucket_mb << 20 < 152064 * 3584 * 2
    embedding = 152064 * 3584 * 2 / GIB  # the largest tensor, sent whole
    model = Shape.of(spec).total_params() * 2 / GIB
    assert rows["tensor"] == pytest.approx(model + embedding)
    assert rows["distributed"] == pytest.approx(2 * embedding) and rows["disk"] == pytest.approx(embedding)
