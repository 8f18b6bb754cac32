"""Conformance of megarl's weight-sync seams with SGLang's own code (issue 11, defects 3 and 4).

Run against the installed sglang (CI: `pip install --no-deps sglang==0.5.23` plus the packages in
setup.py's `dev` extra): its `MultiprocessingSerializer.deserialize` and `FlattenedTensorBucket`
read megarl's `tensor` payloads; its `init_custom_process_group` receives megarl's broadcast; its
`ServerArgs` parser reads the launcher's full command line, admin-key file included.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from megarl.rollout.weight_buckets import FlattenedTensorMetadata, pack_into
from megarl.rollout.weight_sync import _file_system_sharing, _new_bucket_buffer, serialize_bucket

try:
    from sglang.srt.server_args import ServerArgs, prepare_server_args
    from sglang.srt.utils.common import MultiprocessingSerializer
    from sglang.srt.weight_sync.tensor_bucket import FlattenedTensorBucket
except ImportError as err:  # pragma: no cover - CI installs sglang
    pytest.skip(f"sglang is not importable ({err}); install it as CI does: pip install --no-deps sglang==0.5.23 "
                "and the dev extra", allow_module_level=True)

PEER = Path(__file__).with_name("sglang_group_peer.py")


def bucket_tensors():
    return [("model.layers.0.self_attn.q_proj.weight", torch.randn(4, 6)),
            ("model.norm.weight", torch.arange(6, dtype=torch.float32)),
            ("lm_head.weight", torch.randn(3, 2).to(torch.bfloat16))]


def packed_bucket(named):
    buffer = _new_bucket_buffer(sum(t.numel() * t.element_size() for _, t in named), shared=True)
    return buffer, pack_into(buffer, named)


@pytest.mark.parametrize("use_sglang", [False, True], ids=["megarl-encoder", "sglang-serializer"])
def test_payload_reads_with_sglang_deserializer_and_bucket(use_sglang):
    named = [(n, t) for n, t in bucket_tensors() if t.dtype == torch.float32]
    buffer, metadata = packed_bucket(named)
    payload = serialize_bucket(buffer, metadata, **({"use_sglang": True} if use_sglang else {}))
    data = MultiprocessingSerializer.deserialize(payload)  # SGLang's allow-list unpickler
    assert type(data["metadata"][0]).__module__ == "sglang.srt.weight_sync.tensor_bucket"
    rebuilt = FlattenedTensorBucket(flattened_tensor=data["flattened_tensor"], metadata=data["metadata"]).reconstruct_tensors()
    assert [n for n, _ in rebuilt] == [n for n, _ in named]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(rebuilt, named))
    # the same bytes read by megarl's built-in server's allow-list unpickler
    from megarl.rollout.weight_buckets import load_payload

    ours = load_payload(payload)
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(
        FlattenedTensorBucket(flattened_tensor=ours["flattened_tensor"], metadata=ours["metadata"]).reconstruct_tensors(), named))


def test_old_payload_with_megarls_class_is_refused_by_sglang():
    """Before the fix megarl pickled its own metadata class: SGLang refuses it (defect 3, `tensor`)."""
    from multiprocessing.reduction import ForkingPickler

    named = bucket_tensors()[:1]
    buffer, metadata = packed_bucket(named)
    out = io.BytesIO()
    with _file_system_sharing():
        ForkingPickler(out).dump({"flattened_tensor": buffer, "metadata": metadata})
    old = base64.b64encode(out.getvalue()).decode()
    with pytest.raises(RuntimeError, match=r"Blocked unsafe global \(megarl\.rollout\.weight_buckets\.FlattenedTensorMetadata\)"):
        MultiprocessingSerializer.deserialize(old)
    assert FlattenedTensorMetadata.__module__ == "megarl.rollout.weight_buckets"  # only the wire name is SGLang's


def test_pusher_sends_one_payload_per_server_tp_rank():
    """Every server TP rank gets an entry of its own that SGLang reads (SGLang indexes it by tp_rank)."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from megarl.rollout.weight_sync import WeightPusher

    bodies = []

    class Recorder(BaseHTTPRequestHandler):  # records what the pusher sends; answers as SGLang does
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
            if self.path == "/update_weights_from_tensor":  # SGLang reads while the sender waits
                bodies.append([MultiprocessingSerializer.deserialize(p) for p in body["serialized_named_tensors"]])
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"success": true, "message": "ok"}')

        def log_message(self, *args):
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        named = bucket_tensors()
        with WeightPusher([f"http://127.0.0.1:{http.server_address[1]}"], transport="tensor", token="t",
                          server_tp_size=2, bucket_bytes=1 << 20) as pusher:
            pusher.push(named, weight_version=1)
    finally:
        http.shutdown()
    assert len(bodies) == 2  # float32 and bfloat16 buckets
    for per_rank in bodies:
        assert len(per_rank) == 2
        for data in per_rank:
            got = dict(FlattenedTensorBucket(flattened_tensor=data["flattened_tensor"], metadata=data["metadata"]).reconstruct_tensors())
            for name, tensor in named:
                assert name not in got or torch.equal(got[name], tensor)


# ---- the update group ---------------------------------------------------------------------------------

def _start_peer(port: int, group_name: str, nbytes: int, timeout_s: float) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(PEER), str(port), group_name, str(nbytes), str(timeout_s)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def test_megarl_sender_meets_sglang_receiver():
    from megarl.rollout.update_group import UpdateGroup
    from megarl.runtime.distributed import free_port

    bucket = torch.randint(0, 256, (4099,), dtype=torch.uint8)
    port = free_port()
    peer = _start_peer(port, "megarl_weight_update", bucket.numel(), 120)
    group = UpdateGroup(backend="gloo", master_address="127.0.0.1", master_port=port, rank=0, world_size=2,
                        group_name="megarl_weight_update", timeout_s=120)
    try:
        group.broadcast(bucket)
        out, _ = peer.communicate(timeout=180)
    finally:
        group.close()
        if peer.poll() is None:
            peer.kill()
    assert f"received {hashlib.sha256(bucket.numpy().tobytes()).hexdigest()}" in out, out


def test_bare_store_sender_never_meets_sglang_receiver():
    """The sender before the fix (a group on the bare TCPStore) waits on other keys than SGLang: both time out."""
    import datetime

    import torch.distributed as dist

    from megarl.runtime.distributed import free_port

    port = free_port()
    peer = _start_peer(port, "megarl_weight_update", 16, 8)
    store = dist.TCPStore("127.0.0.1", port, 2, True, timeout=datetime.timedelta(seconds=120))  # the peer imports sglang
    timeout = datetime.timedelta(seconds=8)
    started = time.monotonic()
    with pytest.raises(Exception, match="(?i)timeout|timed out|wait"):
        dist.ProcessGroupGloo(store, 0, 2, timeout)
    out, _ = peer.communicate(timeout=120)
    assert peer.returncode == 1 and "failed DistStoreError: wait timeout" in out, out
    assert time.monotonic() - started < 60


# ---- the launcher's command line ------------------------------------------------------------------------

def test_launcher_command_parses_with_sglang_server_args(tmp_path):
    from megarl.rollout.admin_token import sglang_admin_key_config
    from megarl.rollout.commands import SGLangServerSpec, sglang_server_command

    token = "megarl-test-token-5e1d"
    key_file = sglang_admin_key_config(token, tmp_path)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    spec = SGLangServerSpec(model_path="/ckpt/hf", port=30007, tp_size=2, mem_fraction_static=0.45,
                            enable_memory_saver=True, deterministic=True, random_seed=3, dtype="bfloat16", base_gpu_id=2,
                            nnodes=2, node_rank=1, dist_init_addr="node0:5000", admin_token=token, weight_version="7",
                            skip_server_warmup=True)
    cmd = sglang_server_command(spec, python="python", admin_key_config=str(key_file))
    assert token not in " ".join(cmd)  # the key is in the 0600 file, not on the command line
    argv = cmd[3:]
    import argparse

    from sglang.srt.utils.server_args_config_parser import ConfigArgumentMerger

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    merged = ConfigArgumentMerger(parser).merge_config_with_args(argv)  # what prepare_server_args does first
    args = parser.parse_args(merged)
    assert args.admin_api_key == token and args.mem_fraction_static == 0.45 and args.tp_size == 2
    assert args.enable_memory_saver and args.base_gpu_id == 2 and args.dist_init_addr == "node0:5000"
    assert (args.model_path, args.port, args.random_seed, args.weight_version) == ("/ckpt/hf", 30007, 3, "7")
    try:
        server_args = prepare_server_args(argv)
    except Exception as err:  # resolution may need a real model or GPU; the parse above already ran
        pytest.skip(f"ServerArgs resolution needs more than a command line here: {err}")
    assert server_args.admin_api_key == token and server_args.mem_fraction_static == 0.45


def test_trainer_launched_sglang_servers_get_an_admin_token(tmp_path):
    """Defect 4: the trainer's SGLang fleet carries a per-run token, handed over in a 0600 --config file."""
    import argparse

    from sglang.srt.utils.server_args_config_parser import ConfigArgumentMerger

    from megarl.rollout.admin_token import sglang_admin_key_config
    from megarl.rollout.fleet import fleet_plan

    fleet = fleet_plan("sglang", tmp_path / "hf", 2, tmp_path / "logs", colocate=True, mem_fraction_static=0.4)
    token = fleet.admin_token
    assert token and len(token) >= 32
    key_file = sglang_admin_key_config(token, tmp_path)
    for cmd in fleet.server_commands(str(key_file)):
        assert token not in " ".join(cmd)
        parser = argparse.ArgumentParser()
        ServerArgs.add_cli_args(parser)
        args = parser.parse_args(ConfigArgumentMerger(parser).merge_config_with_args(cmd[3:]))
        assert args.admin_api_key == token and args.mem_fraction_static == 0.4 and args.enable_memory_saver


def _sglang_source(module: str):
    import ast
    import importlib.util

    path = importlib.util.find_spec(module).origin  # the installed file, not imported (io_struct needs torchvision)
    text = Path(path).read_text()
    return text, ast.parse(text)


def test_partial_rollouts_use_sglangs_pause_semantics():
    """Async partial rollouts rely on three SGLang behaviours, read from the installed source: /pause_generation
    takes mode="abort" (what WeightPusher sends), an abort returns the requests with the tokens so far, and a
    /generate received while paused waits for /continue_generation (a continuation sent during the update
    runs on the new weights)."""
    import ast
    import inspect

    from megarl.rollout.weight_sync import WeightPusher

    text, tree = _sglang_source("sglang.srt.managers.io_struct")
    pause = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "PauseGenerationReqInput")
    mode = next(n for n in pause.body if isinstance(n, ast.AnnAssign) and n.target.id == "mode")
    modes = [e.value for e in mode.annotation.slice.elts]
    assert inspect.signature(WeightPusher).parameters["pause_mode"].default == "abort" and "abort" in modes
    assert "Abort and return all requests" in ast.get_docstring(pause)
    text, tree = _sglang_source("sglang.srt.managers.tokenizer_manager")
    manager = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "TokenizerManager")
    methods = {n.name: ast.get_source_segment(text, n) for n in manager.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    assert "abort_request(abort_all=True)" in methods["pause_generation"]
    waits = [name for name, src in methods.items() if "is_pause_cond.wait_for(lambda: not self.is_pause)" in src]
    assert "generate_request" in waits, waits
    routes, _ = _sglang_source("sglang.srt.entrypoints.http_server")
    assert '@app.post("/pause_generation")' in routes and '@app.post("/continue_generation")' in routes
