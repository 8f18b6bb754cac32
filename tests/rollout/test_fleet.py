"""The server fleet: SGLang commands (checked against SGLang's own argument names when installed), the built-in
server's command, health waits, and starting/stopping built-in servers."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest
from rollout_helpers import ServerProcess

from megarl.rollout.commands import ServerLaunch, SGLangServerSpec, sglang_router_command, sglang_server_command
from megarl.rollout.fleet import FleetPlan, wait_for_health
from megarl.runtime.device import on_gpu


def test_server_command_has_the_right_flags():
    spec = SGLangServerSpec(model_path="/ckpt/hf", port=30001, tp_size=4, mem_fraction_static=0.7, enable_memory_saver=True,
                            deterministic=True, random_seed=1, dtype="bfloat16", base_gpu_id=4, admin_token="tok",
                            weight_version="0")
    cmd = sglang_server_command(spec, python="python", admin_key_config="/private/key.yaml")
    assert cmd[:3] == ["python", "-m", "sglang.launch_server"] and "tok" not in cmd
    args = " ".join(cmd[3:])
    for expected in ("--model-path /ckpt/hf", "--port 30001", "--tp-size 4", "--mem-fraction-static 0.7",
                     "--enable-memory-saver", "--enable-deterministic-inference", "--random-seed 1", "--dtype bfloat16",
                     "--base-gpu-id 4", "--config /private/key.yaml", "--weight-version 0", "--host 127.0.0.1"):
        assert expected in args
    plain = sglang_server_command(SGLangServerSpec(model_path="m"), python="python")
    assert "--enable-memory-saver" not in plain and "--enable-deterministic-inference" not in plain
    multi = sglang_server_command(SGLangServerSpec(model_path="m", tp_size=16, nnodes=2, node_rank=1,
                                                   dist_init_addr="node0:5000"), python="python")
    assert " ".join(multi).endswith("--nnodes 2 --node-rank 1 --dist-init-addr node0:5000")


def test_servers_started_for_a_run_serve_in_the_trainer_dtype(tmp_path):
    """A run's own servers get model.dtype as --dtype (bf16 recipes: bf16 servers), as a Slurm job's do."""
    from megarl.rollout.commands import builtin_server_command, server_dtype
    from megarl.rollout.fleet import fleet_plan

    fleet = fleet_plan("sglang", tmp_path / "hf", 2, tmp_path / "logs", dtype="bf16")
    assert all(cmd[cmd.index("--dtype") + 1] == "bfloat16" for cmd in fleet.server_commands(None))
    assert "--dtype" not in fleet_plan("sglang", tmp_path / "hf", 1, tmp_path / "logs").server_commands(None)[0]  # the checkpoint's
    assert builtin_server_command(ServerLaunch("/m", 1, dtype="bf16"))[-2:] == ["--dtype", "bfloat16"]
    with pytest.raises(ValueError, match="not a model.dtype"):
        server_dtype("bfloat16")


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match="never goes on a command line"):
        sglang_server_command(SGLangServerSpec(model_path="m", admin_token="tok"))
    with pytest.raises(ValueError, match="dist_init_addr"):
        sglang_server_command(SGLangServerSpec(model_path="m", nnodes=2))
    with pytest.raises(ValueError, match="mem_fraction_static"):
        sglang_server_command(SGLangServerSpec(model_path="m", mem_fraction_static=1.5))
    with pytest.raises(ValueError, match="policy"):
        sglang_router_command(["http://a:1"], policy="fastest")


def test_router_command():
    cmd = sglang_router_command(["http://n1:30000", "http://n2:30000"], port=30100, python="python")
    assert cmd == ["python", "-m", "sglang_router.launch_router", "--host", "127.0.0.1", "--port", "30100",
                   "--policy", "cache_aware", "--worker-urls", "http://n1:30000", "http://n2:30000"]


@pytest.mark.skipif(importlib.util.find_spec("sglang") is None, reason="sglang not installed (pip install --no-deps sglang)")
def test_flags_are_sglang_server_args():
    root = importlib.util.find_spec("sglang").submodule_search_locations[0]
    fields = set(re.findall(r'^\s+"([a-z0-9_]+)",', open(os.path.join(root, "srt", "arg_groups", "field_order.py")).read(), re.M))
    spec = SGLangServerSpec(model_path="m", mem_fraction_static=0.5, enable_memory_saver=True, deterministic=True,
                            random_seed=1, dtype="bfloat16", base_gpu_id=1, nnodes=2, dist_init_addr="a:1",
                            admin_token="t", weight_version="v", skip_server_warmup=True)
    flags = [a[2:].replace("-", "_") for a in sglang_server_command(spec, admin_key_config="k.yaml")[3:]
             if a.startswith("--") and a != "--config"]  # --config: SGLang's config-file flag, not a field
    assert set(flags) <= fields, f"not SGLang server args: {set(flags) - fields}"


def test_wait_for_health(tiny_model_dir):
    server = ServerProcess(tiny_model_dir)
    try:
        wait_for_health(server.url, timeout_s=30, poll_s=0.1)
    finally:
        server.stop()
    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    dead.wait()
    with pytest.raises(RuntimeError, match="exited with code 3"):
        wait_for_health("http://127.0.0.1:9", timeout_s=30, process=dead, poll_s=0.1)
    with pytest.raises(TimeoutError):
        wait_for_health("http://127.0.0.1:9", timeout_s=0.3, poll_s=0.1)


@pytest.mark.skipif(on_gpu(), reason="checks the CPU refusal")
def test_fleet_refuses_to_start_without_gpus():
    with pytest.raises(RuntimeError, match="megarl serve"):
        FleetPlan("sglang", [ServerLaunch("m", 1)]).start()


def test_builtin_fleet_starts_in_own_process_groups_and_stops(tiny_model_dir, tmp_path):
    """The trainer's built-in servers: healthy when returned, each in its own process group with an
    owner-only log, all gone after stop(); the command is the one the Slurm node manager runs too."""
    from megarl.rollout.commands import builtin_server_command
    from megarl.rollout.fleet import is_healthy, start_servers, wait_for_servers

    fleet = start_servers("builtin", tiny_model_dir, 2, tmp_path / "logs", seed=3)
    try:
        assert fleet.generation_urls == fleet.server_urls and len(fleet.server_urls) == 2
        assert wait_for_servers(fleet.server_urls, timeout_s=1, log=lambda m: None) == fleet.server_urls
        for i, (process, log) in enumerate(zip(fleet.processes, fleet.logs)):
            assert os.getpgid(process.pid) == process.pid != os.getpgid(0)  # killpg reaches its children
            assert oct(log.stat().st_mode & 0o777) == oct(0o600)
            port = int(fleet.server_urls[i].rsplit(":", 1)[1])
            assert process.args == builtin_server_command(ServerLaunch(str(tiny_model_dir), port, seed=3 + i))
        processes = list(fleet.processes)
    finally:
        fleet.stop(grace_s=10)
    assert all(p.poll() is not None for p in processes) and fleet.processes == []
    assert not any(is_healthy(url, timeout_s=1) for url in fleet.server_urls)


def test_builtin_fleet_reports_a_server_that_dies_with_its_log(tmp_path):
    from megarl.rollout.fleet import start_servers

    with pytest.raises(RuntimeError, match=r"exited with code [1-9].*rollout_server_0\.log:\n(.|\n)*no_model_here' does not exist"):
        start_servers("builtin", tmp_path / "no_model_here", 1, tmp_path / "logs", timeout_s=60)


def test_the_engine_table_shapes_the_plan():
    """Per-engine differences come from megarl.rollout.engines: TP, router, token handover, batch size flag."""
    from megarl.rollout.admin_token import TOKEN_ENV
    from megarl.rollout.fleet import fleet_plan

    builtin = fleet_plan("builtin", "/m", 2, None, tp=4, router=True, max_batch_sequences=32)
    assert builtin.router_port is None and [launch.tp for launch in builtin.launches] == [1, 1]  # no TP, no router
    assert builtin.env[TOKEN_ENV] == builtin.admin_token  # by environment, never argv
    command = builtin.server_commands(None)[0]
    assert command[command.index("--max-batch-sequences") + 1] == "32" and builtin.admin_token not in command
    sglang = fleet_plan("sglang", "/m", 2, None, tp=4, router=True)
    assert sglang.router_port is not None and [launch.first_gpu for launch in sglang.launches] == [0, 4]
    assert sglang.env.get(TOKEN_ENV) != sglang.admin_token  # SGLang reads it from the 0600 --config file
    first = sglang.server_commands("/private/key.yaml")[0]
    assert first[first.index("--config") + 1] == "/private/key.yaml" and first[first.index("--tp-size") + 1] == "4"
    with pytest.raises(ValueError, match="builtin servers run without a router"):
        FleetPlan("builtin", builtin.launches, router_port=1)
    with pytest.raises(ValueError, match=r"rollout engine 'vllm' is unknown; choose one of: builtin, sglang"):
        fleet_plan("vllm", "/m", 1, None)
